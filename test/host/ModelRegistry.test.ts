import { HttpServer } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Logger, LogLevel, ManagedRuntime, Stream } from "effect"
import OpenAI from "openai"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { ModelAlreadyServed, ModelLoading, ModelNotFound, ModelUnloading } from "../../src/host/HostErrors.js"
import { observedEngineLayer, schedulerLayer } from "../../src/host/LocalEngine.js"
import { ModelRegistry } from "../../src/host/ModelRegistry.js"
import { serverLayer } from "../../src/layers.js"

const simEngine = (id: string, parallel: number, tokenLatency: "1 millis" | "10 millis" = "1 millis") =>
  observedEngineLayer(schedulerLayer(SimBackend.layer({ id, parallel, contextSize: 4096, tokenLatency })))

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

  it.live("a request for a model that is loading waits for it, up to the model's load wait, then gets ModelLoading", () =>
    Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      const gated = (id: string) => Layer.unwrapEffect(Effect.as(Deferred.await(release), simEngine(id, 1)))
      const context = yield* Layer.build(ModelRegistry.layer([
        { id: "patient", loadWaitMs: 60_000, engine: gated("patient") },
        { id: "hasty", loadWaitMs: 20, engine: gated("hasty") }
      ]))
      const registry = Context.get(context, ModelRegistry)
      const waiting = yield* Effect.fork(registry.resolve("patient"))
      expect(yield* Effect.flip(registry.resolve("hasty"))).toBeInstanceOf(ModelLoading)
      yield* Deferred.succeed(release, undefined)
      expect((yield* Fiber.join(waiting)).backend.info.id).toBe("patient")
    }).pipe(Effect.scoped))

  it.live("loads a model at run time, refuses a second load of its id, and unloads it after its running request", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(ModelRegistry.layer([{ engine: simEngine("resident", 1) }]))
      const registry = Context.get(context, ModelRegistry)
      yield* registry.ready
      const engine = yield* registry.load({ id: "guest", engine: simEngine("guest", 1, "10 millis") })
      expect((yield* registry.models).map((model) => model.id)).toEqual(["resident", "guest"])
      expect(yield* Effect.flip(registry.load({ id: "guest", engine: simEngine("guest", 1) }))).toBeInstanceOf(ModelAlreadyServed)

      // A running generation on the model being unloaded finishes; new requests for it are refused meanwhile.
      const running = yield* engine.scheduler.submit({
        id: "g1",
        prompt: [256, 104, 105],
        sampling: { ...defaultSampling, seed: 1, ignoreEos: true },
        maxTokens: 100
      }).pipe(Stream.runCollect, Effect.fork)
      yield* Effect.repeat(engine.scheduler.stats, { until: (stats) => stats.running === 1 })
      const unloading = yield* Effect.fork(registry.unload("guest", 60_000))
      yield* Effect.repeat(registry.models, { until: (models) => models.some((model) => model.id === "guest" && model.draining) })
      expect(yield* Effect.flip(registry.resolve("guest"))).toBeInstanceOf(ModelUnloading)
      yield* Fiber.join(unloading)
      expect([...(yield* Fiber.join(running))].at(-1)).toMatchObject({ _tag: "Finished", finishReason: "length" })
      expect(yield* Effect.flip(registry.resolve("guest"))).toBeInstanceOf(ModelNotFound)
      expect((yield* registry.models).map((model) => model.id)).toEqual(["resident"])
      expect(yield* Effect.flip(registry.unload("guest", 0))).toBeInstanceOf(ModelNotFound)

      // A load that fails leaves nothing behind; the id can be loaded again.
      const broken = Layer.fail(new Error("no such file")) as unknown as ReturnType<typeof simEngine>
      yield* Effect.flip(registry.load({ id: "guest", engine: broken }))
      expect((yield* registry.models).map((model) => model.id)).toEqual(["resident"])
      yield* registry.load({ id: "guest", engine: simEngine("guest", 1) })
      expect((yield* registry.resolve("resident")).backend.info.id).toBe("resident")
    }).pipe(Effect.scoped, Effect.provide(Logger.minimumLogLevel(LogLevel.None))))

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
