import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { findNativeBuild } from "../../src/engine/llama/LlamaBinary.js"
import { firstSseFrame, health, postJson, sseData, startServer, waitForHealth } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

const chat = (extra: Record<string, unknown> = {}) => ({
  model: tinyModelId,
  messages: [{ role: "user", content: "Hello" }],
  max_tokens: 2,
  ...extra
})

describe("raw HTTP against the tiny model", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(tinyBackend())
  })
  afterAll(() => server?.close())

  const expectError = async (response: Response, status: number, param?: string | null) => {
    expect(response.status).toBe(status)
    expect(response.headers.get("content-type")).toContain("application/json")
    expect(response.headers.get("x-request-id")).toBeTruthy()
    const body = (await response.json()) as ErrorBody
    expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"])
    expect(body.error.message.length).toBeGreaterThan(0)
    if (param !== undefined) expect(body.error.param).toBe(param)
    return body.error
  }

  it("reports health with slots and queue", async () => {
    const { status, body } = await health(server)
    expect(status).toBe(200)
    // `binary`: which llama.cpp build serves (prebuilt on a clean checkout, native after `weft build-native`).
    expect(body).toEqual({ status: "ok", binary: findNativeBuild() === undefined ? "prebuilt" : "native", slots: { total: 4, free: 4 }, queue: { length: 0, limit: 64 } })
  })

  it("answers malformed JSON with 400", async () => {
    const error = await expectError(await postJson(server, "/v1/chat/completions", "{\"model\": "), 400, null)
    expect(error.type).toBe("invalid_request_error")
    await expectError(await postJson(server, "/v1/chat/completions", ""), 400, null)
    await expectError(await postJson(server, "/v1/chat/completions", "[1, 2]"), 400, null)
  })

  it("answers wrong types and missing parameters with 400 naming the parameter", async () => {
    const cases: ReadonlyArray<readonly [unknown, string, string]> = [
      [chat({ temperature: "hot" }), "temperature", "invalid_type"],
      [chat({ temperature: 5 }), "temperature", "invalid_value"],
      [chat({ max_tokens: -1 }), "max_tokens", "invalid_value"],
      [chat({ messages: "hi" }), "messages", "invalid_value"],
      [chat({ messages: [] }), "messages", "invalid_value"],
      [chat({ messages: [{ role: "robot", content: "x" }] }), "messages[0].role", "invalid_value"],
      [chat({ messages: [{ role: "tool", content: "x" }] }), "messages[0].tool_call_id", "missing_required_parameter"],
      [chat({ messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }), "messages[0].content[0].type", "invalid_type"],
      [chat({ stream: "yes" }), "stream", "invalid_type"],
      [chat({ stop: ["ok", 1] }), "stop[1]", "invalid_type"],
      [{ messages: [{ role: "user", content: "x" }] }, "model", "missing_required_parameter"],
      [chat({ response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object", properties: { a: { type: "what" } } } } } }), "response_format.json_schema.schema.properties.a.type", "invalid_json_schema"]
    ]
    for (const [body, param, code] of cases) {
      const error = await expectError(await postJson(server, "/v1/chat/completions", body), 400, param)
      expect({ param, code: error.code }).toEqual({ param, code })
      expect(error.message).toContain(param)
    }
  })

  it("tolerates unknown fields and nulls", async () => {
    const response = await postJson(server, "/v1/chat/completions", chat({ foo: { bar: 1 }, logit_bias: {}, tools: [], stop: null, seed: null }))
    expect(response.status).toBe(200)
    const body = (await response.json()) as { readonly choices: ReadonlyArray<unknown> }
    expect(body.choices).toHaveLength(1)
  })

  it("answers an unknown model with 404", async () => {
    const error = await expectError(await postJson(server, "/v1/chat/completions", chat({ model: "gpt-4o" })), 404, "model")
    expect(error.code).toBe("model_not_found")
    await expectError(await fetch(`${server.url}/v1/models/gpt-4o`), 404)
  })

  it("answers n and prompt counts over the choice cap with 400", async () => {
    await expectError(await postJson(server, "/v1/chat/completions", chat({ n: 17 })), 400, "n")
    expect((await postJson(server, "/v1/chat/completions", chat({ n: 1 }))).status).toBe(200)
    await expectError(await postJson(server, "/v1/completions", { model: tinyModelId, prompt: Array.from({ length: 17 }, () => "a") }), 400, "n")
    await expectError(await postJson(server, "/v1/completions", { model: tinyModelId, prompt: [[1, 2], "b"] }), 400, "prompt")
  })

  it("answers unknown routes with 404 and wrong methods with 405 in OpenAI's envelope", async () => {
    await expectError(await fetch(`${server.url}/v1/nothing`), 404)
    await expectError(await fetch(`${server.url}/v1/chat/completions`), 405)
  })

  it("echoes a client's x-request-id", async () => {
    const response = await postJson(server, "/v1/chat/completions", chat(), { headers: { "content-type": "application/json", "x-request-id": "trace-42" } })
    expect(response.headers.get("x-request-id")).toBe("trace-42")
  })

  it("reports prompt tokens served from the prefix cache, shared only under the same cache_salt", async () => {
    interface UsageBody {
      readonly usage: { readonly prompt_tokens: number; readonly prompt_tokens_details: { readonly cached_tokens: number } }
    }
    const ask = async (salt: string) => {
      const messages = [{ role: "system", content: "You are a patient narrator of very long stories." }, { role: "user", content: "Tell me one." }]
      const response = await postJson(server, "/v1/chat/completions", chat({ messages, cache_salt: salt }))
      expect(response.status).toBe(200)
      return ((await response.json()) as UsageBody).usage
    }
    const first = await ask("tenant-a")
    expect(first.prompt_tokens_details.cached_tokens).toBe(0)
    const again = await ask("tenant-a")
    expect(again.prompt_tokens_details.cached_tokens).toBeGreaterThan(0)
    expect(again.prompt_tokens_details.cached_tokens).toBeLessThanOrEqual(again.prompt_tokens)
    expect((await ask("tenant-b")).prompt_tokens_details.cached_tokens).toBe(0)
  })

  it("ends a generation that fills the context with finish_reason length, not an error", async () => {
    const response = await postJson(server, "/v1/completions", { model: tinyModelId, prompt: "Hi", max_tokens: 100_000, ignore_eos: true, seed: 1 })
    expect(response.status).toBe(200)
    const body = (await response.json()) as {
      readonly choices: ReadonlyArray<{ readonly finish_reason: string }>
      readonly usage: { readonly total_tokens: number }
    }
    const contextSize = server.engine.backend.info.contextSize
    // "stop" only if an end-of-generation token slipped past ignore_eos (see openaiClient.test.ts).
    if (body.choices[0]!.finish_reason === "length") expect(body.usage.total_tokens).toBe(contextSize + 1)
    else expect(body.choices[0]!.finish_reason).toBe("stop")
  })

  it("frees the slot of a client that disconnects mid-stream", async () => {
    const controller = new AbortController()
    const response = await postJson(server, "/v1/chat/completions", chat({ max_tokens: 100_000, ignore_eos: true, stream: true }), {
      signal: controller.signal
    })
    expect(response.status).toBe(200)
    expect(response.headers.get("content-type")).toContain("text/event-stream")
    await firstSseFrame(response)
    controller.abort()
    const after = await waitForHealth(server, (body) => body.slots.free === body.slots.total)
    expect(after.queue.length).toBe(0)
  })

  it("completes 16 concurrent streams", async () => {
    const streams = Array.from({ length: 16 }, async (_, index) => {
      const response = await postJson(server, "/v1/chat/completions", chat({ max_tokens: 8, ignore_eos: true, stream: true, seed: index, messages: [{ role: "user", content: `stream ${index}` }] }))
      expect(response.status).toBe(200)
      return sseData(await response.text())
    })
    for (const frames of await Promise.all(streams)) {
      expect(frames.at(-1)).toBe("[DONE]")
      const chunks = frames.slice(0, -1).map((frame) => JSON.parse(frame) as { readonly choices: ReadonlyArray<{ readonly finish_reason: string | null }> })
      // "stop" only if an end-of-generation token slipped past ignore_eos (see openaiClient.test.ts).
      expect(["length", "stop"]).toContain(chunks.at(-1)!.choices[0]!.finish_reason)
    }
    await waitForHealth(server, (body) => body.slots.free === 4 && body.queue.length === 0)
  })
})
