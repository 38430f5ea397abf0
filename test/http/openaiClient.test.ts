import { Effect, Either, Schema } from "effect"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { findNativeBuild } from "../../src/engine/llama/LlamaBinary.js"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { startServer, waitForHealth } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

/**
 * `ignore_eos` keeps a generation to exactly `max_tokens` with finish_reason "length"; it may still end early with
 * "stop" (LlamaBackend's ban of end-of-generation tokens leaks rarely), and then it used fewer tokens.
 */
const expectLimitReached = (finishReason: string | null | undefined, completionTokens: number, maxTokens: number) => {
  expect(["length", "stop"]).toContain(finishReason)
  if (finishReason === "length") expect(completionTokens).toBe(maxTokens)
  else expect(completionTokens).toBeLessThan(maxTokens)
}

const clientFor = (server: TestServer) => new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })

describe("openai client against the tiny model", () => {
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(tinyBackend())
    client = clientFor(server)
  })
  afterAll(() => server?.close())

  it("lists and retrieves the model", async () => {
    const models = await client.models.list()
    expect(models.data.map((model) => model.id)).toEqual([tinyModelId])
    const model = await client.models.retrieve(tinyModelId)
    expect(model).toMatchObject({ id: tinyModelId, object: "model", owned_by: "weft" })
  })

  it("says which llama.cpp binary serves: /health, /admin/stats and weft_build_info", async () => {
    // A clean checkout (CI) has no native build; a developer's may, after `weft build-native`.
    const kind = findNativeBuild() === undefined ? "prebuilt" : "native"
    const health = await (await fetch(`${server.url}/health`)).json() as { binary?: string }
    expect(health.binary).toBe(kind)
    const stats = await (await fetch(`${server.url}/admin/stats`)).json() as {
      binary?: { kind: string; release: string; decodeSteps?: string; weights?: string }
    }
    expect(stats.binary?.kind).toBe(kind)
    // The native build has the synchronous calls (its patch 0002); the prebuilt one decodes on libuv threads.
    expect(stats.binary?.decodeSteps).toBe(kind === "native" ? "synchronous" : "libuv")
    // `--mmap auto`: the native build reads the weights into memory (on huge pages, its llama.cpp patch); the prebuilt
    // binary maps the file.
    expect(stats.binary?.weights).toBe(kind === "native" ? "memory" : "mmap")
    expect(stats.binary?.release).toMatch(/\S/)
    const metrics = await (await fetch(`${server.url}/metrics`)).text()
    expect(metrics).toMatch(new RegExp(`^weft_build_info\\{.*binary="${kind}".*\\} 1$`, "m"))
  })

  it("answers a chat completion with OpenAI's shape and usage that adds up", async () => {
    const completion = await client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello there" }],
      max_tokens: 8,
      ignore_eos: true,
      seed: 7
    } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    expect(completion.object).toBe("chat.completion")
    expect(completion.id).toMatch(/^chatcmpl-/)
    expect(completion.model).toBe(tinyModelId)
    expect(Number.isInteger(completion.created)).toBe(true)
    expect(completion.choices).toHaveLength(1)
    const [choice] = completion.choices
    expect(choice!.index).toBe(0)
    expect(choice!.message.role).toBe("assistant")
    expect(typeof choice!.message.content).toBe("string")
    const usage = completion.usage!
    expectLimitReached(choice!.finish_reason, usage.completion_tokens, 8)
    expect(usage.prompt_tokens).toBeGreaterThan(0)
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens)
  })

  it("accepts content as text parts and max_completion_tokens", async () => {
    const completion = await client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "user", content: [{ type: "text", text: "Hello" }, { type: "text", text: " there" }] }],
      max_completion_tokens: 3
    })
    expect(completion.usage!.completion_tokens).toBeLessThanOrEqual(3)
  })

  it("streams a chat completion: role first, content chunks, finish_reason in a chunk of its own with an empty delta, then usage", async () => {
    const messages = [{ role: "user" as const, content: "Stream to me" }]
    const stream = await client.chat.completions.create({
      model: tinyModelId,
      messages,
      max_tokens: 6,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true }
    } as OpenAI.ChatCompletionCreateParamsStreaming)
    const chunks: Array<OpenAI.ChatCompletionChunk> = []
    for await (const chunk of stream) chunks.push(chunk)

    expect(chunks.every((chunk) => chunk.object === "chat.completion.chunk" && chunk.id === chunks[0]!.id)).toBe(true)
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant")
    const usageChunk = chunks.at(-1)!
    expect(usageChunk.choices).toEqual([])
    const contentChunks = chunks.slice(0, -1)
    const finishReasons = contentChunks.map((chunk) => chunk.choices[0]!.finish_reason)
    expect(finishReasons.slice(0, -1).every((reason) => reason === null)).toBe(true)
    expect(contentChunks.every((chunk) => chunk.usage === null)).toBe(true)
    expectLimitReached(finishReasons.at(-1), usageChunk.usage!.completion_tokens, 6)
    // Every token's text goes out as it is generated; none is held back to carry finish_reason.
    expect(contentChunks.at(-1)!.choices[0]!.delta).toEqual({})
    const texts = contentChunks.slice(1, -1).map((chunk) => chunk.choices[0]!.delta.content)
    expect(texts.every((text) => typeof text === "string" && text.length > 0)).toBe(true)

    const blocking = await client.chat.completions.create({ model: tinyModelId, messages, max_tokens: 1 })
    expect(usageChunk.usage!.prompt_tokens).toBe(blocking.usage!.prompt_tokens)
    expect(usageChunk.usage!.total_tokens).toBe(usageChunk.usage!.prompt_tokens + usageChunk.usage!.completion_tokens)
  })

  it("answers a legacy completion, streaming and not", async () => {
    const completion = await client.completions.create({ model: tinyModelId, prompt: "Once upon a time", max_tokens: 5, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming)
    expect(completion.object).toBe("text_completion")
    expect(completion.id).toMatch(/^cmpl-/)
    expect(typeof completion.choices[0]!.text).toBe("string")
    expectLimitReached(completion.choices[0]!.finish_reason, completion.usage!.completion_tokens, 5)
    expect(completion.usage!.total_tokens).toBe(completion.usage!.prompt_tokens + completion.usage!.completion_tokens)

    const stream = await client.completions.create({
      model: tinyModelId,
      prompt: ["Once upon a time"],
      max_tokens: 4,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true }
    } as OpenAI.CompletionCreateParamsStreaming)
    const chunks: Array<OpenAI.Completion> = []
    for await (const chunk of stream) chunks.push(chunk)
    const usage = chunks.at(-1)!.usage!
    expect(usage.prompt_tokens).toBe(completion.usage!.prompt_tokens)
    expectLimitReached(chunks.at(-2)!.choices[0]!.finish_reason, usage.completion_tokens, 4)
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens)
  })

  it("defaults legacy completions to OpenAI's 16 tokens", async () => {
    const completion = await client.completions.create({ model: tinyModelId, prompt: "Hi", ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming)
    expectLimitReached(completion.choices[0]!.finish_reason, completion.usage!.completion_tokens, 16)
  })

  it("enforces a json_schema response format: the output parses and validates", async () => {
    // No free-form strings: a random-weights model may emit byte tokens that are not valid UTF-8 inside them.
    const Answer = Schema.Struct({
      color: Schema.Literal("red", "green", "blue"),
      ok: Schema.Boolean,
      size: Schema.Literal(1, 2, 3),
      kind: Schema.Literal("thing"),
      tags: Schema.Array(Schema.Literal("a", "b")).pipe(Schema.maxItems(2)),
      inner: Schema.Struct({ flag: Schema.NullOr(Schema.Boolean) })
    })
    const completion = await client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "user", content: "Describe a thing as JSON" }],
      max_tokens: 200,
      seed: 3,
      response_format: {
        type: "json_schema",
        json_schema: {
          name: "answer",
          strict: true,
          schema: {
            type: "object",
            properties: {
              color: { type: "string", enum: ["red", "green", "blue"] },
              ok: { type: "boolean" },
              size: { enum: [1, 2, 3] },
              kind: { const: "thing" },
              tags: { type: "array", items: { anyOf: [{ const: "a" }, { const: "b" }] }, maxItems: 2 },
              inner: {
                type: "object",
                properties: { flag: { type: ["boolean", "null"] } },
                required: ["flag"],
                additionalProperties: false
              }
            },
            required: ["color", "ok", "size", "kind", "tags", "inner"],
            additionalProperties: false
          }
        }
      }
    })
    expect(completion.choices[0]!.finish_reason).toBe("stop")
    const parsed: unknown = JSON.parse(completion.choices[0]!.message.content!)
    expect(Schema.decodeUnknownEither(Answer, { onExcessProperty: "error" })(parsed)).toEqual(Either.right(parsed))
  })

  it("enforces json_object: every answer that ends parses as a JSON object", async () => {
    // Free-form JSON from random weights can run past any max_tokens, so seeds are tried until two answers end
    // on their own (the grammar allows `{}` at once, and about half the seeds take it).
    const finished: Array<string> = []
    for (let seed = 0; seed < 20 && finished.length < 2; seed++) {
      const completion = await client.chat.completions.create({
        model: tinyModelId,
        messages: [{ role: "user", content: "JSON please" }],
        max_tokens: 8,
        seed,
        response_format: { type: "json_object" }
      })
      if (completion.choices[0]!.finish_reason === "stop") finished.push(completion.choices[0]!.message.content!)
    }
    expect(finished.length).toBeGreaterThan(0)
    for (const content of finished) {
      const parsed: unknown = JSON.parse(content)
      expect(typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)).toBe(true)
    }
  })

  it("rejects a schema it cannot enforce with 400 naming where", async () => {
    const error = await client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "user", content: "x" }],
      response_format: { type: "json_schema", json_schema: { name: "n", schema: { type: "object", properties: { age: { type: "integer", minimum: 0 } } } } }
    }).catch((error: unknown) => error)
    expect(error).toBeInstanceOf(OpenAI.BadRequestError)
    expect((error as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("response_format.json_schema.schema.properties.age.minimum")
  })

  it("maps 400, 404 and 413 to the client's error classes", async () => {
    const badRequest = await client.chat.completions.create({ model: tinyModelId, messages: [{ role: "user", content: "x" }], n: 99 }).catch((error: unknown) => error)
    expect(badRequest).toBeInstanceOf(OpenAI.BadRequestError)
    expect((badRequest as InstanceType<typeof OpenAI.BadRequestError>).status).toBe(400)
    expect((badRequest as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("n")

    const notFound = await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] }).catch((error: unknown) => error)
    expect(notFound).toBeInstanceOf(OpenAI.NotFoundError)
    expect((notFound as InstanceType<typeof OpenAI.NotFoundError>).code).toBe("model_not_found")

    const tooLarge = await client.chat.completions.create({ model: tinyModelId, messages: [{ role: "user", content: "x".repeat(5 * 1024 * 1024) }] }).catch((error: unknown) => error)
    expect(tooLarge).toBeInstanceOf(OpenAI.APIError)
    expect((tooLarge as InstanceType<typeof OpenAI.APIError>).status).toBe(413)
    expect((tooLarge as InstanceType<typeof OpenAI.APIError>).code).toBe("request_too_large")

    const wrongType = await client.chat.completions.create({ model: tinyModelId, messages: [{ role: "user", content: "x" }], temperature: "hot" as unknown as number }).catch((error: unknown) => error)
    expect(wrongType).toBeInstanceOf(OpenAI.BadRequestError)
    expect((wrongType as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("temperature")
  })
})

describe("openai client: load, timeout and drain errors (SimBackend behind the real server)", () => {
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 1_000_000, tokenLatency: 5 }), {
      scheduler: { maxQueue: 1 }
    })
    client = clientFor(server)
  })
  afterAll(() => server?.close())

  const longRequest = { model: "sim", messages: [{ role: "user" as const, content: "go on" }], max_tokens: 1_000_000, ignore_eos: true }

  it("429 RateLimitError when the queue is full, 408 when the queue wait times out", async () => {
    const holder = new AbortController()
    const holding = await client.chat.completions.create({ ...longRequest, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming, { signal: holder.signal })
    const iterator = holding[Symbol.asyncIterator]()
    await iterator.next()

    const timedOut = await client.chat.completions.create({ ...longRequest, timeout_queue_ms: 50 } as OpenAI.ChatCompletionCreateParamsNonStreaming).catch((error: unknown) => error)
    expect(timedOut).toBeInstanceOf(OpenAI.APIError)
    expect((timedOut as InstanceType<typeof OpenAI.APIError>).status).toBe(408)
    expect((timedOut as InstanceType<typeof OpenAI.APIError>).message).toContain("50 ms")

    const waiter = new AbortController()
    const waiting = client.chat.completions.create(longRequest as OpenAI.ChatCompletionCreateParamsNonStreaming, { signal: waiter.signal }).catch((error: unknown) => error)
    await waitForHealth(server, (body) => body.queue.length === 1)
    const rejected = await client.chat.completions.create(longRequest as OpenAI.ChatCompletionCreateParamsNonStreaming).catch((error: unknown) => error)
    expect(rejected).toBeInstanceOf(OpenAI.RateLimitError)
    expect(Number((rejected as InstanceType<typeof OpenAI.RateLimitError>).headers?.get("retry-after"))).toBeGreaterThanOrEqual(1)

    waiter.abort()
    holder.abort()
    expect(await waiting).toBeInstanceOf(OpenAI.APIUserAbortError)
    await waitForHealth(server, (body) => body.slots.free === 1 && body.queue.length === 0)
  })

  it("504 for a generation timeout, naming the stage and limit", async () => {
    const error = await client.chat.completions.create({ ...longRequest, timeout_total_ms: 100 } as OpenAI.ChatCompletionCreateParamsNonStreaming).catch((error: unknown) => error)
    expect(error).toBeInstanceOf(OpenAI.InternalServerError)
    expect((error as InstanceType<typeof OpenAI.InternalServerError>).status).toBe(504)
    expect((error as InstanceType<typeof OpenAI.InternalServerError>).message).toContain("total generation time exceeded its limit of 100 ms")
  })

  it("an error after the stream started arrives in-band and the client throws it", async () => {
    const stream = await client.chat.completions.create({ ...longRequest, stream: true, timeout_total_ms: 150 } as OpenAI.ChatCompletionCreateParamsStreaming)
    let received = 0
    const error = await (async () => {
      for await (const _ of stream) received++
    })().catch((error: unknown) => error)
    expect(received).toBeGreaterThan(0)
    expect(error).toBeInstanceOf(OpenAI.APIError)
    expect((error as InstanceType<typeof OpenAI.APIError>).message).toContain("total generation time exceeded its limit of 150 ms")
  })

  it("503 InternalServerError while draining", async () => {
    await Effect.runPromise(server.engine.scheduler.shutdown(0))
    const error = await client.chat.completions.create({ ...longRequest, max_tokens: 1 }).catch((error: unknown) => error)
    expect(error).toBeInstanceOf(OpenAI.InternalServerError)
    expect((error as InstanceType<typeof OpenAI.InternalServerError>).status).toBe(503)
    expect((error as InstanceType<typeof OpenAI.InternalServerError>).code).toBe("shutting_down")
  })
})
