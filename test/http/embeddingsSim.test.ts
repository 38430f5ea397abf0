import { HttpServer } from "@effect/platform"
import { Effect, Logger, LogLevel, ManagedRuntime, Layer } from "effect"
import OpenAI from "openai"
import { afterAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { schedulerLayer } from "../../src/host/LocalEngine.js"
import { ModelRegistry } from "../../src/host/ModelRegistry.js"
import { serverLayer } from "../../src/layers.js"
import { postJson, startServer } from "../support/testServer.js"

describe("/v1/embeddings admission over HTTP (SimBackend)", () => {
  it("answers 429 queue_full beyond --max-queue waiting embedding requests, and 408 past the queue timeout", async () => {
    // One embedding request runs at a time; 40 ms per token keeps the first busy (4 s) long after the others arrive
    // and time out, with seconds of margin for a loaded machine.
    const server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 256, tokenLatency: 1, prefillLatencyPerToken: 40 }), {
      scheduler: { maxQueue: 1 }
    })
    try {
      const embed = (input: string, extra: Record<string, unknown> = {}) =>
        postJson(server, "/v1/embeddings", { model: "sim", input, ...extra })
      const running = embed("x".repeat(100))
      await new Promise((resolve) => setTimeout(resolve, 500))
      // Both arrive while the first runs: whichever is admitted first waits and times out, the other finds the queue full.
      const answers = await Promise.all([embed("y", { timeout_queue_ms: 200 }), embed("z", { timeout_queue_ms: 200 })])
      const bodies = await Promise.all(answers.map((answer) => answer.json() as Promise<{ error: { code: string } }>))
      const outcomes = answers.map((answer, index) => `${answer.status} ${bodies[index]!.error.code}`).sort()
      expect(outcomes).toEqual(["408 queue_timeout", "429 queue_full"])
      expect(answers.find((answer) => answer.status === 429)!.headers.get("retry-after")).not.toBeNull()
      expect((await running).status).toBe(200)
      const client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
      const after = await client.embeddings.create({ model: "sim", input: ["a", "b"] })
      expect(after.data).toHaveLength(2)
      await postJson(server, "/tokenize", { content: "a" })
      await postJson(server, "/detokenize", { tokens: [97] })
      // Each route is its own `endpoint` label, not `other`.
      const metrics = await (await fetch(`${server.url}/metrics`)).text()
      for (const endpoint of ["/v1/embeddings", "/tokenize", "/detokenize"]) {
        expect(metrics).toContain(`weft_requests_total{endpoint="${endpoint}",model="sim",status="200"}`)
      }
      expect(metrics).toContain(`weft_requests_total{endpoint="/v1/embeddings",model="sim",status="429"} 1`)
    } finally {
      await server.close()
    }
  })
})

describe("/tokenize with several models", () => {
  const runtime = ManagedRuntime.make(
    serverLayer(
      ["one", "two"].map((id) => ({
        id,
        engine: schedulerLayer(SimBackend.layer({ id, parallel: 1, contextSize: 64, tokenLatency: 1 }))
      })),
      { host: "127.0.0.1", port: 0, maxBodyBytes: 1 << 20, shutdownGraceMs: 0 },
      { databasePath: ":memory:" }
    ).pipe(Layer.provide(Logger.minimumLogLevel(LogLevel.Error)))
  )
  afterAll(() => runtime.dispose())

  it("needs `model` to pick one: 400 naming `model` without it, the named model's tokens with it", async () => {
    const url = await runtime.runPromise(
      Effect.gen(function*() {
        yield* Effect.flatMap(ModelRegistry, (registry) => registry.ready)
        const address = (yield* HttpServer.HttpServer).address
        return address._tag === "TcpAddress" ? `http://127.0.0.1:${address.port}` : ""
      })
    )
    const without = await postJson({ url }, "/tokenize", { content: "hi" })
    expect(without.status).toBe(400)
    expect(((await without.json()) as { error: { param: string } }).error.param).toBe("model")
    const named = await postJson({ url }, "/tokenize", { content: "hi", model: "two" })
    expect(await named.json()).toEqual({ tokens: [104, 105] })
    const detokenized = await postJson({ url }, "/detokenize", { tokens: [104, 105], model: "one" })
    expect(await detokenized.json()).toEqual({ content: "hi" })
  })
})
