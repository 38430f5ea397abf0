import { Cause, Context, Deferred, Effect, Exit, Fiber, Layer, Schema, Scope } from "effect"
import { Backend } from "../engine/Backend.js"
import type { BackendShape } from "../engine/Backend.js"
import type { ModelLoadFailed } from "../engine/llama/LlamaBackend.js"
import type { ModelWriteFailed } from "../model/generateModel.js"
import { SchedulerMetrics } from "../observability/SchedulerMetrics.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"

/** Why the engine behind the server could not start. */
export type EngineStartFailed = ModelLoadFailed | ModelWriteFailed

/** The model is still being generated or loaded; requests are answered 503 until it is ready. */
export class ModelLoading extends Schema.TaggedError<ModelLoading>()("ModelLoading", {}) {
  override get message(): string {
    return "The model is still loading; retry shortly"
  }
}

/** What a request needs once the model is loaded: the backend for tokenizing, the scheduler for generating. */
export interface Engine {
  readonly backend: BackendShape
  readonly scheduler: RequestScheduler
  /** The scheduler's metrics, for `/metrics` and `/admin/stats`. */
  readonly metrics: SchedulerMetrics
}

/** Where the engine is in its start-up. */
export type EngineState =
  | { readonly _tag: "Loading" }
  | { readonly _tag: "Ready"; readonly engine: Engine }
  | { readonly _tag: "Failed"; readonly message: string }

export interface ModelHostShape {
  readonly state: Effect.Effect<EngineState>
  /** The engine, or `ModelLoading` at once while it is not ready yet. */
  readonly engine: Effect.Effect<Engine, ModelLoading>
  /** Waits until the engine is ready, failing if it cannot start. */
  readonly ready: Effect.Effect<Engine, EngineStartFailed>
}

/**
 * Builds the engine (model generation, loading, scheduler) in the background, so the HTTP server listens,
 * answers `/health` with 503 while the model loads, and serves once it is ready.
 */
export class ModelHost extends Context.Tag("weft/ModelHost")<ModelHost, ModelHostShape>() {
  static layer = (engine: Layer.Layer<RequestScheduler | Backend | SchedulerMetrics, EngineStartFailed>): Layer.Layer<ModelHost> =>
    Layer.scoped(
      ModelHost,
      Effect.gen(function*() {
        const loaded = yield* Deferred.make<Engine, EngineStartFailed>()
        // Its own scope, closed only after the build fiber is done: a load in flight finishes, then is released.
        const engineScope = yield* Scope.make()
        let current: EngineState = { _tag: "Loading" }
        const build = Layer.buildWithScope(engine, engineScope).pipe(
          Effect.map((context): Engine => ({
            backend: Context.get(context, Backend),
            scheduler: Context.get(context, RequestScheduler),
            metrics: Context.get(context, SchedulerMetrics)
          })),
          Effect.exit,
          Effect.tap((exit) =>
            Effect.sync(() => {
              current = Exit.isSuccess(exit)
                ? { _tag: "Ready", engine: exit.value }
                : { _tag: "Failed", message: Cause.pretty(exit.cause) }
            })
          ),
          Effect.tap((exit) => {
            if (Exit.isFailure(exit)) {
              return Cause.isInterruptedOnly(exit.cause) ? Effect.void : Effect.logError("engine failed to start", exit.cause)
            }
            const info = exit.value.backend.info
            return Effect.logInfo("engine ready").pipe(
              Effect.annotateLogs({ model: info.id, parallel: info.parallel, contextSize: info.contextSize })
            )
          }),
          Effect.flatMap((exit) => Deferred.done(loaded, exit))
        )
        const fiber = yield* Effect.forkDaemon(build)
        yield* Effect.addFinalizer(() => Effect.zipRight(Fiber.interrupt(fiber), Scope.close(engineScope, Exit.void)))

        const state = Effect.sync(() => current)

        return {
          state,
          engine: Effect.flatMap(state, (now) => (now._tag === "Ready" ? Effect.succeed(now.engine) : new ModelLoading())),
          ready: Deferred.await(loaded)
        } satisfies ModelHostShape
      })
    )
}
