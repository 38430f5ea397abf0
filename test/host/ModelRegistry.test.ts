import { HttpServer } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Layer, Logger, LogLevel, ManagedRuntime, Stream } from "effect"
import OpenAI from "openai"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { ModelLoading, ModelNotFound } from "../../src/host/HostErrors.js"
import { observedEngineLayer, schedulerLayer } from "../../src/host/LocalEngine.js"
import { ModelRegistry } from "../../src/host/ModelRegistry.js"
import { serverLayer } from "../../src/layers.js"

const simEngine = (id: string, parallel: number) =>
  observedEngineLayer(schedulerLayer(SimBackend.layer({ id, parallel, contextSize: 4096, tokenLatency: "1 millis" })))

describe("ModelRegistry", () => {
  it.live("serves each model by its id while another is still loading, and reports each model's state", () =>
    Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      // The second model's load waits until the test lets it finish.
      const slowEngine = Layer.unwrapEffect(Effect.as(Deferred.await(release), simEngine("late", 1)))
      const context = yield* Layer.build(ModelRegistry.layer([{ engine: simEngine("early", 2) }, { id: "late", engine: slowEngine }]))
      const registry = Context.get(context, ModelRegistry)

      yield* Effect.repeat(registry.engines, { until: (engines) => engines.length === 1 })
      const early = yield* registry.resolve("early")
      expect(early.backend.info.id).toBe("early")
      expect(yield* Effect.flip(registry.resolve("late"))).toBeInstanceOf(ModelLoading)
      expect((yield* registry.models).map((model) => [model.id, model.state._tag])).toEqual([["early", "Ready"], ["late", "Loading"]])

      yield* Deferred.succeed(release, undefined)
      const engines = yield* registry.ready
      expect(engines.map((engine) => engine.backend.info.id)).toEqual(["early", "late"])
      expect((yield* registry.resolve("late")).backend.info.parallel).toBe(1)
      expect(yield* Effect.flip(registry.resolve("missing"))).toBeInstanceOf(ModelNotFound)

      // A generation on one model leaves the other's slots alone.
      const events = yield* early.scheduler.submit({
        id: "r1",
        prompt: [256, 104, 105],
        sampling: { ...defaultSampling, seed: 1, ignoreEos: true },
        maxTokens: 3
      }).pipe(Stream.runCollect)
      expect([...events].at(-1)).toMatchObject({ _tag: "Finished", finishReason: "length" })

      yield* registry.shutdown(0)
      expect((yield* registry.models).every((model) => model.draining)).toBe(true)
    }).pipe(Effect.scoped))

  it("a model that fails to start is reported failed and the others keep serving", async () => {
    const broken = Layer.fail(new Error("no such file")) as unknown as ReturnType<typeof simEngine>
    const runtime = ManagedRuntime.make(
      ModelRegistry.layer([{ engine: simEngine("ok", 1) }, { id: "broken", engine: broken }]).pipe(
        Layer.provide(Logger.minimumLogLevel(LogLevel.None))
      )
    )
    try {
      const exit = await runtime.runPromiseExit(Effect.flatMap(ModelRegistry, (registry) => registry.ready))
      expect(Exit.isFailure(exit)).toBe(true)
      const models = await runtime.runPromise(Effect.flatMap(ModelRegistry, (registry) => registry.models))
      expect(models.map((model) => [model.id, model.state._tag])).toEqual([["ok", "Ready"], ["broken", "Failed"]])
      const ok = await runtime.runPromise(Effect.flatMap(ModelRegistry, (registry) => registry.resolve("ok")))
      expect(ok.backend.info.id).toBe("ok")
    } finally {
      await runtime.dispose()
    }
  })

  it("over HTTP, two models are listed, each answers under its own id, and /health sums their slots", async () => {
    const layer = serverLayer(
      [
        { engine: schedulerLayer(SimBackend.layer({ id: "alpha", parallel: 2, contextSize: 4096, tokenLatency: "1 millis" })) },
        { engine: schedulerLayer(SimBackend.layer({ id: "beta", parallel: 3, contextSize: 4096, tokenLatency: "1 millis" })) }
      ],
      { host: "127.0.0.1", port: 0, maxBodyBytes: 1 << 20, shutdownGraceMs: 0 },
      { databasePath: ":memory:" }
    ).pipe(Layer.provide(Logger.minimumLogLevel(LogLevel.Error)))
    const runtime = ManagedRuntime.make(layer)
    try {
      const port = await runtime.runPromise(
        Effect.map(HttpServer.HttpServer, (server) => (server.address._tag === "TcpAddress" ? server.address.port : 0))
      )
      await runtime.runPromise(Effect.flatMap(ModelRegistry, (registry) => registry.ready))
      const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "unused" })
      expect((await client.models.list()).data.map((model) => model.id)).toEqual(["alpha", "beta"])
      for (const model of ["alpha", "beta"]) {
        const completion = await client.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 4 })
        expect(completion.model).toBe(model)
      }
      await expect(client.chat.completions.create({ model: "gamma", messages: [{ role: "user", content: "hi" }] }))
        .rejects.toMatchObject({ status: 404, code: "model_not_found" })
      const health = await (await fetch(`http://127.0.0.1:${port}/health`)).json()
      expect(health).toEqual({ status: "ok", slots: { total: 5, free: 5 }, queue: { length: 0, limit: 128 } })
    } finally {
      await runtime.dispose()
    }
  })
})
