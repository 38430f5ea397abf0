import { Cause, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Option, Ref, Scope } from "effect"
import { Backend } from "../engine/Backend.js"
import { SchedulerMetrics } from "../observability/SchedulerMetrics.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import { ModelAlreadyServed, ModelLoading, ModelNotFound, ModelUnloading } from "./HostErrors.js"
import type { Engine, EngineLayer, EngineStartFailed } from "./LocalEngine.js"

/** A model to serve: its engine's layer, and the id clients send when it is known before the model loads. */
export interface ModelDefinition {
  /** Without it, the id is the loaded backend's own (`ModelInfo.id`). */
  readonly id?: string | undefined
  readonly engine: EngineLayer
  /** How long a request for this model waits while it loads (its queue timeout); without it, `ModelLoading` at once. */
  readonly loadWaitMs?: number | undefined
}

/** Where one model is in its life: loading in the background, serving (or draining), or failed to start. */
export type ModelState =
  | { readonly _tag: "Loading" }
  | { readonly _tag: "Ready"; readonly engine: Engine }
  | { readonly _tag: "Failed"; readonly message: string }

/** One registered model as the registry reports it. */
export interface ModelStatus {
  /** The declared id, or the engine's once loaded; undefined while a model without a declared id loads. */
  readonly id: string | undefined
  readonly state: ModelState
  readonly draining: boolean
}

export interface ModelRegistryShape {
  /** Every registered model, in registration order. */
  readonly models: Effect.Effect<ReadonlyArray<ModelStatus>>
  /** The engines serving now. */
  readonly engines: Effect.Effect<ReadonlyArray<Engine>>
  /**
   * The engine serving `model`. `ModelLoading` while that model (or one whose id is not known yet) is loading,
   * `ModelNotFound` when no registered model has that id.
   */
  readonly resolve: (model: string) => Effect.Effect<Engine, ModelLoading | ModelNotFound | ModelUnloading>
  /** Waits until every model registered so far is ready; fails with the first that cannot start. */
  readonly ready: Effect.Effect<ReadonlyArray<Engine>, EngineStartFailed>
  /** Adds a model, which loads in the background; it is released when the registry is. */
  readonly register: (definition: ModelDefinition) => Effect.Effect<void>
  /**
   * Adds a model with a declared id and waits until it serves. A model that cannot start is removed again (its
   * failure returned), so a refused load leaves nothing behind.
   */
  readonly load: (definition: ModelDefinition & { readonly id: string }) => Effect.Effect<Engine, EngineStartFailed | ModelAlreadyServed>
  /**
   * Unloads a model: new requests for it get `ModelUnloading` at once, running ones get `graceMs` to finish (then are
   * cancelled), and its engine scope is closed (weights, contexts, memory reservations released).
   */
  readonly unload: (model: string, graceMs: number) => Effect.Effect<void, ModelNotFound | ModelUnloading>
  /** Drains every serving model at once: no new requests, in-flight ones get `graceMs`, then are cancelled. */
  readonly shutdown: (graceMs: number) => Effect.Effect<void>
}

interface Entry {
  readonly declaredId: string | undefined
  readonly loadWaitMs: number | undefined
  readonly state: Ref.Ref<ModelState>
  readonly loaded: Deferred.Deferred<Engine, EngineStartFailed>
  /** Set once by `unload`, which then removes the entry. */
  readonly unloading: Ref.Ref<boolean>
  readonly engineScope: Scope.CloseableScope
  /** Set by `load` once the build fiber is forked. */
  readonly fiber: Ref.Ref<Option.Option<Fiber.RuntimeFiber<void>>>
  /** Stops the load fiber and releases the engine; runs once, on unload or when the registry closes. */
  readonly release: Effect.Effect<void>
}

const idOf = (declaredId: string | undefined, state: ModelState): string | undefined =>
  declaredId ?? (state._tag === "Ready" ? state.engine.backend.info.id : undefined)

const engineOf = (context: Context.Context<RequestScheduler | Backend | SchedulerMetrics>): Engine => ({
  backend: Context.get(context, Backend),
  scheduler: Context.get(context, RequestScheduler),
  metrics: Context.get(context, SchedulerMetrics)
})

/**
 * Every model this process serves, by id. Each engine is built in the background in a scope of its own, so the
 * HTTP server listens (and answers `/health` with 503) while models load, and serves each once it is ready.
 */
export class ModelRegistry extends Context.Tag("weft/ModelRegistry")<ModelRegistry, ModelRegistryShape>() {
  static layer = (definitions: ReadonlyArray<ModelDefinition>): Layer.Layer<ModelRegistry> =>
    Layer.scoped(
      ModelRegistry,
      Effect.gen(function*() {
        const registryScope = yield* Effect.scope
        // Entries are appended by `register` and removed by `unload` (or a failed `load`); each entry's state is written
        // only by its own load fiber.
        const entries = yield* Ref.make<ReadonlyArray<Entry>>([])

        const load = (entry: Entry, engineLayer: EngineLayer) =>
          Effect.gen(function*() {
            const engineScope = entry.engineScope
            const build = Layer.buildWithScope(engineLayer, engineScope).pipe(
              Effect.map(engineOf),
              Effect.exit,
              Effect.tap((exit) =>
                Ref.set(
                  entry.state,
                  Exit.isSuccess(exit) ? { _tag: "Ready", engine: exit.value } : { _tag: "Failed", message: Cause.pretty(exit.cause) }
                )
              ),
              Effect.tap((exit) => {
                if (Exit.isFailure(exit)) {
                  return Cause.isInterruptedOnly(exit.cause) ? Effect.void : Effect.logError("engine failed to start", exit.cause)
                }
                const info = exit.value.backend.info
                return Effect.logInfo("engine ready").pipe(
                  Effect.annotateLogs({
                    model: info.id,
                    parallel: info.parallel,
                    contextSize: info.contextSize,
                    ...(info.binary === undefined ? {} : { binary: info.binary.kind, decodeSteps: info.binary.decodeSteps, weights: info.binary.weights })
                  })
                )
              }),
              Effect.flatMap((exit) => Deferred.done(entry.loaded, exit)),
              Effect.asVoid
            )
            yield* Ref.set(entry.fiber, Option.some(yield* Effect.forkDaemon(build)))
            yield* Scope.addFinalizer(registryScope, entry.release)
          })

        const newEntry = (definition: ModelDefinition) =>
          Effect.gen(function*() {
            // Its own scope, closed only after the load fiber is done: a load in flight finishes, then is released.
            const engineScope = yield* Scope.make()
            const fiber = yield* Ref.make(Option.none<Fiber.RuntimeFiber<void>>())
            const release = yield* Effect.cached(
              Effect.zipRight(Effect.flatMap(Ref.get(fiber), Option.match({ onNone: () => Effect.void, onSome: Fiber.interrupt })), Scope.close(engineScope, Exit.void))
            )
            const entry: Entry = {
              declaredId: definition.id,
              loadWaitMs: definition.loadWaitMs,
              state: yield* Ref.make<ModelState>({ _tag: "Loading" }),
              loaded: yield* Deferred.make<Engine, EngineStartFailed>(),
              unloading: yield* Ref.make(false),
              engineScope,
              fiber,
              release: Effect.asVoid(release)
            }
            return entry
          })

        const register = (definition: ModelDefinition) =>
          Effect.gen(function*() {
            const entry = yield* newEntry(definition)
            yield* Ref.update(entries, (list) => [...list, entry])
            yield* load(entry, definition.engine)
          })

        const remove = (entry: Entry) => Effect.zipRight(Ref.update(entries, (list) => list.filter((other) => other !== entry)), entry.release)

        const entryOf = (model: string) =>
          Effect.flatMap(Ref.get(entries), (list) =>
            Effect.findFirst(list, (entry) => Effect.map(Ref.get(entry.state), (state) => idOf(entry.declaredId, state) === model)))

        const loadModel = (definition: ModelDefinition & { readonly id: string }) =>
          Effect.gen(function*() {
            if (Option.isSome(yield* entryOf(definition.id))) return yield* new ModelAlreadyServed({ model: definition.id })
            const entry = yield* newEntry(definition)
            // Checking the declared ids and adding the entry in one step, so two loads of one id cannot both pass.
            const added = yield* Ref.modify(entries, (list) =>
              list.some((other) => other.declaredId === definition.id) ? [false, list] : [true, [...list, entry]])
            if (!added) return yield* new ModelAlreadyServed({ model: definition.id })
            yield* load(entry, definition.engine)
            return yield* Deferred.await(entry.loaded).pipe(Effect.tapError(() => remove(entry)))
          })

        const unload = (model: string, graceMs: number) =>
          Effect.gen(function*() {
            const entry = yield* Effect.flatten(entryOf(model)).pipe(Effect.mapError(() => new ModelNotFound({ model })))
            if (yield* Ref.getAndSet(entry.unloading, true)) return yield* new ModelUnloading({ model })
            const state = yield* Ref.get(entry.state)
            if (state._tag === "Ready") yield* state.engine.scheduler.shutdown(graceMs)
            yield* remove(entry)
            yield* Effect.logInfo("model unloaded").pipe(Effect.annotateLogs({ model }))
          })

        const models = Effect.flatMap(Ref.get(entries), (list) =>
          Effect.forEach(list, (entry) =>
            Effect.flatMap(Ref.get(entry.state), (state) =>
              Effect.map(
                Effect.zipWith(
                  state._tag === "Ready" ? state.engine.scheduler.isDraining : Effect.succeed(false),
                  Ref.get(entry.unloading),
                  (draining, unloading) => draining || unloading
                ),
                (draining): ModelStatus => ({ id: idOf(entry.declaredId, state), state, draining })
              ))))

        const engines = Effect.map(models, (list) => list.flatMap((model) => (model.state._tag === "Ready" ? [model.state.engine] : [])))

        /** A model still loading: its requests wait up to its `loadWaitMs`, then get `ModelLoading`. */
        const awaitLoad = (entry: Entry, model: string): Effect.Effect<Engine, ModelLoading | ModelNotFound | ModelUnloading> =>
          entry.loadWaitMs === undefined || entry.loadWaitMs <= 0
            ? Effect.fail(new ModelLoading())
            : Deferred.await(entry.loaded).pipe(
              Effect.timeoutFail({ duration: Duration.millis(entry.loadWaitMs), onTimeout: () => new ModelLoading() }),
              // It failed to start while the request waited: as if it had never been there.
              Effect.catchIf((error) => !(error instanceof ModelLoading), () => Effect.fail(new ModelNotFound({ model }))),
              Effect.zipLeft(Effect.flatMap(Ref.get(entry.unloading), (unloading) => (unloading ? Effect.fail(new ModelUnloading({ model })) : Effect.void)))
            )

        const resolve = (model: string) =>
          Effect.flatMap(Ref.get(entries), (list): Effect.Effect<Engine, ModelLoading | ModelNotFound | ModelUnloading> =>
            Effect.gen(function*() {
              let anonymousLoading = false
              for (const entry of list) {
                const state = yield* Ref.get(entry.state)
                const id = idOf(entry.declaredId, state)
                if (id === undefined && state._tag === "Loading") anonymousLoading = true
                if (id !== model) continue
                if (yield* Ref.get(entry.unloading)) return yield* new ModelUnloading({ model })
                if (state._tag === "Ready") return state.engine
                if (state._tag === "Loading") return yield* awaitLoad(entry, model)
              }
              return yield* (anonymousLoading ? new ModelLoading() : new ModelNotFound({ model }))
            }))

        const ready = Effect.flatMap(Ref.get(entries), (list) => Effect.forEach(list, (entry) => Deferred.await(entry.loaded)))

        const shutdown = (graceMs: number) =>
          Effect.flatMap(engines, (list) => Effect.forEach(list, (engine) => engine.scheduler.shutdown(graceMs), { concurrency: "unbounded", discard: true }))

        yield* Effect.forEach(definitions, register, { discard: true })

        return { models, engines, resolve, ready, register, load: loadModel, unload, shutdown } satisfies ModelRegistryShape
      })
    )
}
