import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { endpointOf } from "../../src/observability/HttpRequestMetrics.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

// Finding 5: the Responses API through the official `openai` client, against the tiny model.

/** Weft's `seed` extension, which the client's types do not know. */
const seeded = <A extends object>(params: A, seed: number) => ({ ...params, seed }) as A

const instructions = "You answer questions about the weather in a calm voice. ".repeat(8)

describe("the Responses API", () => {
  const databasePath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "weft-http-responses-")), "sessions.sqlite")
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 2048 }), { sessionsDatabasePath: databasePath })
    client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
  })
  afterAll(() => server?.close())

  it("creates a response from a string input", async () => {
    const response = await client.responses.create({ model: tinyModelId, input: "Hello there", max_output_tokens: 8 })
    expect(response).toMatchObject({ object: "response", model: tinyModelId, store: true, previous_response_id: null })
    expect(response.id).toMatch(/^resp_/)
    expect(["completed", "incomplete"]).toContain(response.status)
    const message = response.output[0]!
    expect(message).toMatchObject({ type: "message", role: "assistant" })
    if (message.type !== "message") throw new Error("expected a message")
    expect(message.id).toMatch(/^msg_/)
    expect(message.content[0]).toMatchObject({ type: "output_text", annotations: [] })
    expect(response.output_text).toBe(message.content[0]!.type === "output_text" ? message.content[0]!.text : "")
    expect(response.usage).toMatchObject({ output_tokens_details: { reasoning_tokens: 0 } })
    expect(response.usage!.total_tokens).toBe(response.usage!.input_tokens + response.usage!.output_tokens)
    expect(response.usage!.output_tokens).toBeGreaterThan(0)
    if (response.status === "incomplete") expect(response.incomplete_details).toEqual({ reason: "max_output_tokens" })
  })

  it("takes message items and instructions, which go before them in the prompt", async () => {
    const bare = await client.responses.create({
      model: tinyModelId,
      input: [{ type: "message", role: "user", content: [{ type: "input_text", text: "Sunny?" }] }],
      max_output_tokens: 4
    })
    const instructed = await client.responses.create({
      model: tinyModelId,
      instructions,
      input: [{ role: "user", content: "Sunny?" }],
      max_output_tokens: 4
    })
    expect(instructed.instructions).toBe(instructions)
    expect(instructed.usage!.input_tokens).toBeGreaterThan(bare.usage!.input_tokens + 50)
  })

  it("constrains the output to text.format's JSON schema", async () => {
    const schema = {
      type: "object",
      properties: { city: { type: "string", maxLength: 12 }, degrees: { type: "integer" } },
      required: ["city", "degrees"],
      additionalProperties: false
    }
    const response = await client.responses.create(seeded({
      model: tinyModelId,
      input: "Weather as JSON",
      max_output_tokens: 200,
      text: { format: { type: "json_schema", name: "weather", schema, strict: true } }
    }, 5))
    expect(response.status).toBe("completed")
    const parsed = JSON.parse(response.output_text) as { city: string; degrees: number }
    expect(Object.keys(parsed).sort()).toEqual(["city", "degrees"])
    expect(Number.isInteger(parsed.degrees)).toBe(true)
    expect(response.text?.format).toMatchObject({ type: "json_schema", name: "weather" })
  })

  it("streams the typed events responses.stream() consumes, ending in the final response", async () => {
    const stream = client.responses.stream({ model: tinyModelId, input: "Tell me about rain", max_output_tokens: 8 })
    const types: Array<string> = []
    const sequence: Array<number> = []
    let deltas = ""
    for await (const event of stream) {
      types.push(event.type)
      sequence.push(event.sequence_number)
      if (event.type === "response.output_text.delta") deltas += event.delta
    }
    const final = await stream.finalResponse()
    expect(sequence).toEqual(sequence.map((_, index) => index))
    const last = final.status === "completed" ? "response.completed" : "response.incomplete"
    expect(types.filter((type) => type !== "response.output_text.delta")).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
      "response.output_text.done",
      "response.content_part.done",
      "response.output_item.done",
      last
    ])
    expect(types).toContain("response.output_text.delta")
    expect(final.output_text).toBe(deltas)
    expect(final.usage!.output_tokens).toBeGreaterThan(0)
    // The streamed response is stored like any other.
    expect((await client.responses.retrieve(final.id)).output_text).toBe(deltas)
  })

  it("sends `event:` lines naming each event type", async () => {
    const response = await postJson(server, "/v1/responses", { model: tinyModelId, input: "Hi", max_output_tokens: 2, stream: true })
    expect(response.headers.get("content-type")).toContain("text/event-stream")
    const frames = (await response.text()).split("\n\n").filter((frame) => frame !== "")
    for (const frame of frames) {
      const [eventLine, dataLine] = frame.split("\n")
      const type = eventLine!.slice("event: ".length)
      expect(JSON.parse(dataLine!.slice("data: ".length))).toMatchObject({ type })
    }
  })

  it("continues a chain with previous_response_id, its prefix served from the cache", async () => {
    const first = await client.responses.create(seeded({ model: tinyModelId, instructions, input: "Sunny today?", max_output_tokens: 6 }, 1))
    const second = await client.responses.create(
      seeded({ model: tinyModelId, instructions, input: "And tomorrow?", previous_response_id: first.id, max_output_tokens: 6 }, 1)
    )
    const third = await client.responses.create(
      seeded({ model: tinyModelId, instructions, input: "And the day after?", previous_response_id: second.id, max_output_tokens: 6 }, 1)
    )
    expect(second.previous_response_id).toBe(first.id)
    // Each prompt holds the whole chain so far; all of the previous prompt comes from the prefix cache.
    expect(second.usage!.input_tokens).toBeGreaterThan(first.usage!.input_tokens)
    expect(third.usage!.input_tokens).toBeGreaterThan(second.usage!.input_tokens)
    expect(second.usage!.input_tokens_details.cached_tokens).toBeGreaterThanOrEqual(first.usage!.input_tokens)
    expect(third.usage!.input_tokens_details.cached_tokens).toBeGreaterThanOrEqual(second.usage!.input_tokens)
    expect(third.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(second.usage!.input_tokens_details.cached_tokens)
  })

  it("retrieves and deletes a stored response; store: false is never retrievable", async () => {
    const stored = await client.responses.create({ model: tinyModelId, input: "Hello", max_output_tokens: 3, metadata: { run: "a" } })
    const retrieved = await client.responses.retrieve(stored.id)
    expect(retrieved).toMatchObject({ id: stored.id, status: stored.status, output_text: stored.output_text, metadata: { run: "a" } })
    await client.responses.delete(stored.id)
    await expect(client.responses.retrieve(stored.id)).rejects.toMatchObject({ status: 404, code: "response_not_found" })
    await expect(client.responses.delete(stored.id)).rejects.toMatchObject({ status: 404 })

    const unstored = await client.responses.create({ model: tinyModelId, input: "Hello", max_output_tokens: 3, store: false })
    expect(unstored).toMatchObject({ store: false })
    await expect(client.responses.retrieve(unstored.id)).rejects.toMatchObject({ status: 404, code: "response_not_found" })
    await expect(
      client.responses.create({ model: tinyModelId, input: "More", previous_response_id: unstored.id, max_output_tokens: 2 })
    ).rejects.toMatchObject({ status: 404, param: "previous_response_id" })
  })

  it("answers bad input with 400s naming the parameter (tools: see responseTools.test.ts)", async () => {
    const badSchema = await postJson(server, "/v1/responses", {
      model: tinyModelId,
      input: "Hi",
      text: { format: { type: "json_schema", name: "s", schema: { type: "string", pattern: "a+" } } }
    })
    expect(badSchema.status).toBe(400)
    expect(((await badSchema.json()) as { error: { param: string } }).error.param).toBe("text.format.schema.pattern")
    const badInput = await postJson(server, "/v1/responses", { model: tinyModelId, input: [{ role: "user", content: [{ type: "input_image", image_url: "x" }] }] })
    expect(badInput.status).toBe(400)
  })
})

describe("the Responses API, when a generation fails mid-stream", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 4096, tokenLatency: 1, script: () => ({ failAtToken: 3 }) }))
  })
  afterAll(() => server?.close())

  it("ends the stream with response.failed carrying the error, and keeps serving", async () => {
    const response = await postJson(server, "/v1/responses", { model: "sim", input: "Hi", max_output_tokens: 20, stream: true })
    expect(response.status).toBe(200)
    const events = (await response.text()).split("\n\n").filter((frame) => frame !== "").map((frame) =>
      JSON.parse(frame.split("\n")[1]!.slice("data: ".length)) as { type: string; response?: { status: string; error: unknown } }
    )
    const last = events.at(-1)!
    expect(last.type).toBe("response.failed")
    expect(last.response).toMatchObject({ status: "failed", error: { code: "internal_error" } })
    expect(events.map((event) => event.type)).not.toContain("response.completed")
    const plain = await postJson(server, "/v1/responses", { model: "sim", input: "Hi", max_output_tokens: 20 })
    expect(plain.status).toBe(500)
  })
})

describe("the Responses API's metric labels", () => {
  it("labels requests by route, one label for every response id", () => {
    expect(endpointOf("/v1/responses", true)).toBe("/v1/responses")
    expect(endpointOf("/v1/responses/resp_1", true)).toBe("/v1/responses/{response_id}")
    expect(endpointOf("/v1/responses/resp_2", true)).toBe("/v1/responses/{response_id}")
  })
})
