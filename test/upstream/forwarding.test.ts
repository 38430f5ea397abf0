import { HttpServer } from "@effect/platform"
import { Effect, Layer, Logger, LogLevel, ManagedRuntime } from "effect"
import OpenAI from "openai"
import { serverLayer } from "../../src/layers.js"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { JsonLogger } from "../../src/observability/JsonLogger.js"
import { startFaultUpstream } from "../support/faultUpstream.js"
import type { FaultUpstream } from "../support/faultUpstream.js"
import { postJson, sseData, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const sim = () => SimBackend.layer({ parallel: 4, contextSize: 256, tokenLatency: 1 })

describe("forwarding to an upstream Weft", () => {
  let upstream: TestServer
  let proxy: FaultUpstream
  let front: TestServer
  const key = "sk-upstream-secret-0123456789"
  const lines: Array<string> = []

  beforeAll(async () => {
    process.env["WEFT_TEST_UPSTREAM_KEY"] = key
    upstream = await startServer(sim())
    proxy = await startFaultUpstream(upstream.url, ({ requestId }) =>
      requestId.startsWith("reject")
        ? { _tag: "Status", status: 401, message: `Incorrect API key provided: ${key}` }
        : { _tag: "Pass" })
    front = await startServer(sim(), {
      models: { chat: { deployments: [{ url: proxy.baseURL, model: "sim", apiKeyEnv: "WEFT_TEST_UPSTREAM_KEY" }] } },
      observability: JsonLogger.layer({ level: "debug", format: "json", write: (line) => lines.push(line) })
    })
  })
  afterAll(async () => {
    await front?.close()
    await proxy?.close()
    await upstream?.close()
  })

  it("answers chat and completions, streamed and not, in OpenAI's shapes, as the routed model", async () => {
    const client = new OpenAI({ baseURL: front.baseURL, apiKey: "unused", maxRetries: 0 })
    const chat = await client.chat.completions.create({ model: "chat", messages: [{ role: "user", content: "hi" }], max_tokens: 6, seed: 3 })
    expect(chat.model).toBe("chat")
    expect(chat.object).toBe("chat.completion")
    expect(chat.usage?.completion_tokens).toBe(6)
    const direct = await new OpenAI({ baseURL: upstream.baseURL, apiKey: "unused", maxRetries: 0 }).chat.completions.create({
      model: "sim", messages: [{ role: "user", content: "hi" }], max_tokens: 6, seed: 3
    })
    expect(chat.choices[0]!.message.content).toBe(direct.choices[0]!.message.content)

    const stream = await client.chat.completions.create({ model: "chat", messages: [{ role: "user", content: "hi" }], max_tokens: 6, seed: 3, stream: true })
    let text = ""
    let finish: string | null = null
    for await (const chunk of stream) {
      expect(chunk.model).toBe("chat")
      // Usage was asked of the upstream for accounting, but this client did not ask for it.
      expect(chunk.usage ?? undefined).toBeUndefined()
      text += chunk.choices[0]?.delta.content ?? ""
      finish = chunk.choices[0]?.finish_reason ?? finish
    }
    expect(text).toBe(direct.choices[0]!.message.content)
    expect(finish).toBe("length")

    const completion = await client.completions.create({ model: "chat", prompt: "abc", max_tokens: 4 })
    expect(completion.model).toBe("chat")
    expect(completion.object).toBe("text_completion")
    expect(completion.usage?.completion_tokens).toBe(4)

    const withUsage = await postJson(front, "/v1/chat/completions", {
      model: "chat", messages: [{ role: "user", content: "hi" }], max_tokens: 3, stream: true, stream_options: { include_usage: true }
    })
    const frames = sseData(await withUsage.text())
    expect(frames.at(-1)).toBe("[DONE]")
    expect(JSON.parse(frames.at(-2)!)).toMatchObject({ choices: [], usage: { completion_tokens: 3 } })
  })

  it("sends the upstream's key and the trace context upstream, and never echoes the key", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
    const response = await postJson(front, "/v1/chat/completions", { model: "chat", messages: [{ role: "user", content: "x" }], max_tokens: 2 }, {
      headers: { "content-type": "application/json", traceparent: `00-${traceId}-00f067aa0ba902b7-01`, "x-request-id": "trace-1" }
    })
    expect(response.status).toBe(200)
    const seen = proxy.log.find((entry) => entry.requestId === "trace-1")!
    expect(seen.authorization).toBe(`Bearer ${key}`)
    expect(seen.model).toBe("sim")
    expect(seen.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-0[01]$`))

    const rejected = await postJson(front, "/v1/chat/completions", { model: "chat", messages: [{ role: "user", content: "x" }] }, {
      headers: { "content-type": "application/json", "x-request-id": "reject-1" }
    })
    expect(rejected.status).toBe(401)
    const text = await rejected.text()
    expect(text).not.toContain(key)
    expect(JSON.parse(text)).toMatchObject({ error: { message: "Incorrect API key provided: [redacted]" } })
    // A 401 is the request's own fault: tried once, never retried.
    expect(proxy.log.filter((entry) => entry.requestId === "reject-1")).toHaveLength(1)
    for (const path of ["/admin/upstreams", "/metrics"]) {
      const body = await (await fetch(`${front.url}${path}`)).text()
      expect(body).not.toContain(key)
    }
    // Logged at every level, the key appears in no line.
    expect(lines.length).toBeGreaterThan(0)
    expect(lines.filter((line) => line.includes(key))).toEqual([])
  })

  it("serves a config of upstream models only: no local model to load, healthy, listed", async () => {
    const runtime = ManagedRuntime.make(
      serverLayer([], { host: "127.0.0.1", port: 0, maxBodyBytes: 1 << 20, shutdownGraceMs: 0 }, { databasePath: ":memory:" }, {}, { databasePath: ":memory:" }, { path: undefined }, {}, undefined, {
        remote: { deployments: [{ url: upstream.baseURL, model: "sim" }] }
      }).pipe(Layer.provide(Logger.minimumLogLevel(LogLevel.Error)))
    )
    try {
      const port = await runtime.runPromise(Effect.flatMap(HttpServer.HttpServer, (server) =>
        server.address._tag === "TcpAddress" ? Effect.succeed(server.address.port) : Effect.dieMessage("expected a TCP address")))
      const url = `http://127.0.0.1:${port}`
      expect((await fetch(`${url}/health`)).status).toBe(200)
      expect(((await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data.map((model) => model.id)).toEqual(["remote"])
      const response = await postJson({ url }, "/v1/completions", { model: "remote", prompt: "abc", max_tokens: 2 })
      expect(((await response.json()) as { model: string }).model).toBe("remote")
    } finally {
      await runtime.dispose()
    }
  })
})
