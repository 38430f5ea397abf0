import { Cause, Context, Deferred, Effect, Exit, Fiber, Layer, Ref, Scope } from "effect"
import { Backend } from "../engine/Backend.js"
import { SchedulerMetrics } from "../observability/SchedulerMetrics.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import { ModelLoading, ModelNotFound } from "./HostErrors.js"
import type { Engine, EngineLayer, EngineStartFailed } from "./LocalEngine.js"

/** A model to serve: its engine's layer, and the id clients send when it is known before the model loads. */
export interface ModelDefinition {
  /** Without it, the id is the loaded backend's own (`ModelInfo.id`). */
  readonly id?: string | undefined
  readonly engine: EngineLayer
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
  readonly resolve: (model: string) => Effect.Effect<Engine, ModelLoading | ModelNotFound>
  /** Waits until every model registered so far is ready; fails with the first that cannot start. */
  readonly ready: Effect.Effect<ReadonlyArray<Engine>, EngineStartFailed>
  /** Adds a model, which loads in the background; it is released when the registry is. */
  readonly register: (definition: ModelDefinition) => Effect.Effect<void>
  /** Drains every serving model at once: no new requests, in-flight ones get `graceMs`, then are cancelled. */
  readonly shutdown: (graceMs: number) => Effect.Effect<void>
}

interface Entry {
  readonly declaredId: string | undefined
  readonly state: Ref.Ref<ModelState>
  readonly loaded: Deferred.Deferred<Engine, EngineStartFailed>
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
        // Entries are only ever appended; each entry's state is written only by its own load fiber.
        const entries = yield* Ref.make<ReadonlyArray<Entry>>([])

        const load = (entry: Entry, engineLayer: EngineLayer) =>
          Effect.gen(function*() {
            // Its own scope, closed only after the load fiber is done: a load in flight finishes, then is released.
            const engineScope = yield* Scope.make()
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
                  Effect.annotateLogs({ model: info.id, parallel: info.parallel, contextSize: info.contextSize, binary: info.binary?.kind })
                )
              }),
              Effect.flatMap((exit) => Deferred.done(entry.loaded, exit))
            )
            const fiber = yield* Effect.forkDaemon(build)
            yield* Scope.addFinalizer(registryScope, Effect.zipRight(Fiber.interrupt(fiber), Scope.close(engineScope, Exit.void)))
          })

        const register = (definition: ModelDefinition) =>
          Effect.gen(function*() {
            const entry: Entry = {
              declaredId: definition.id,
              state: yield* Ref.make<ModelState>({ _tag: "Loading" }),
              loaded: yield* Deferred.make<Engine, EngineStartFailed>()
            }
            yield* Ref.update(entries, (list) => [...list, entry])
            yield* load(entry, definition.engine)
          })

        const models = Effect.flatMap(Ref.get(entries), (list) =>
          Effect.forEach(list, (entry) =>
            Effect.flatMap(Ref.get(entry.state), (state) =>
              Effect.map(
                state._tag === "Ready" ? state.engine.scheduler.isDraining : Effect.succeed(false),
                (draining): ModelStatus => ({ id: idOf(entry.declaredId, state), state, draining })
              ))))

        const engines = Effect.map(models, (list) => list.flatMap((model) => (model.state._tag === "Ready" ? [model.state.engine] : [])))

        const resolve = (model: string) =>
          Effect.flatMap(models, (list): Effect.Effect<Engine, ModelLoading | ModelNotFound> => {
            const found = list.find((status) => status.id === model)
            if (found?.state._tag === "Ready") return Effect.succeed(found.state.engine)
            if (found?.state._tag === "Loading" || list.some((status) => status.id === undefined && status.state._tag === "Loading")) {
              return Effect.fail(new ModelLoading())
            }
            return Effect.fail(new ModelNotFound({ model }))
          })

        const ready = Effect.flatMap(Ref.get(entries), (list) => Effect.forEach(list, (entry) => Deferred.await(entry.loaded)))

        const shutdown = (graceMs: number) =>
          Effect.flatMap(engines, (list) => Effect.forEach(list, (engine) => engine.scheduler.shutdown(graceMs), { concurrency: "unbounded", discard: true }))

        yield* Effect.forEach(definitions, register, { discard: true })

        return { models, engines, resolve, ready, register, shutdown } satisfies ModelRegistryShape
      })
    )
}
