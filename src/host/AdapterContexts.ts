import { Clock, Context, Data, Deferred, Effect, Either, Exit, Layer, Schema, Scope, Stream } from "effect"
import { AdapterLoadFailed, Backend, DecodeFailed } from "../engine/Backend.js"
import { effectiveTimeouts } from "../scheduler/GenerationLoop.js"
import { GenerationEvent } from "../scheduler/GenerationRequest.js"
import type { GenerationRequest } from "../scheduler/GenerationRequest.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import { QueueFull, StageTimedOut } from "../scheduler/SchedulerErrors.js"
import { SchedulerMetrics } from "../observability/SchedulerMetrics.js"
import { ModelNotFound } from "./HostErrors.js"
import type { ModelLoading, ModelUnloading } from "./HostErrors.js"
import { observedEngineLayer, schedulerLayer } from "./LocalEngine.js"
import type { Engine } from "./LocalEngine.js"
import { ModelRegistry } from "./ModelRegistry.js"

/** A LoRA adapter served as `model:name`. */
export interface AdapterDeclaration {
  readonly model: string
  readonly name: string
  /** The adapter's GGUF. */
  readonly path: string
  /** How strongly it is applied; 1 is as trained. */
  readonly scale: number
}

/** Adapters at start-up, and how many adapter contexts may exist at once. */
export interface AdapterSettings {
  readonly maxAdapters: number
  readonly adapters: ReadonlyArray<AdapterDeclaration>
}

/** One declared adapter as `/admin/adapters` reports it. */
export interface AdapterStatus extends AdapterDeclaration {
  /** What requests send as `model`. */
  readonly id: string
  /** Whether it has a context now (`loading` while one is created). */
  readonly state: "unloaded" | "loading" | "loaded"
  /** Requests holding its context (running, or queued in its scheduler). */
  readonly requests: number
}

/** An adapter of that name is already declared on that model (or its context is still draining after a delete). */
export class AdapterExists extends Schema.TaggedError<AdapterExists>()("AdapterExists", { id: Schema.String }) {
  override get message(): string {
    return `The adapter \`${this.id}\` already exists; delete it first to replace it`
  }
}

/** The model's engine cannot apply LoRA adapters. */
export class AdaptersUnsupported extends Schema.TaggedError<AdaptersUnsupported>()("AdaptersUnsupported", { model: Schema.String }) {
  override get message(): string {
    return `The model \`${this.model}\` does not take LoRA adapters`
  }
}

/** `model:adapter`. */
export const adapterId = (model: string, adapter: string): string => `${model}:${adapter}`

/** What asking for a lease found: the adapter undeclared, the wait queue full, a wait, or a lease (maybe to build). */
type Reservation = Data.TaggedEnum<{
  Gone: {}
  Full: { readonly queued: number }
  Wait: { readonly signal: Deferred.Deferred<void> }
  Leased: { readonly context: LiveContext; readonly build: boolean; readonly evicted: ReadonlyArray<LiveContext> }
}>
const Reservation = Data.taggedEnum<Reservation>()

/** A context made for one adapter on one base engine; its counters change only under the service's lock. */
interface LiveContext {
  readonly id: string
  readonly declaration: AdapterDeclaration
  /** The engine it was made on: a model reloaded under the same id makes it stale. */
  readonly base: Engine
  readonly scope: Scope.CloseableScope
  readonly engine: Deferred.Deferred<Engine, AdapterLoadFailed>
  /** Leases held: requests between asking for the context and the end of their stream. */
  leases: number
  lastUsed: number
  loaded: boolean
}

export interface AdapterContextsShape {
  /** Every declared adapter, in declaration order. */
  readonly list: Effect.Effect<ReadonlyArray<AdapterStatus>>
  /** The declared adapter ids of `model`. */
  readonly idsOf: (model: string) => Effect.Effect<ReadonlyArray<string>>
  /**
   * The engine serving `model:adapter`: the base model's tokenizer with a scheduler whose requests first take a lease
   * on the adapter's context (created on demand, waiting like a queued request when every allowed context is busy).
   */
  readonly resolve: (model: string, adapter: string) => Effect.Effect<Engine, ModelLoading | ModelNotFound | ModelUnloading>
  /** Declares an adapter after loading its weights onto the model, so a file that does not fit is refused now. */
  readonly add: (
    declaration: AdapterDeclaration
  ) => Effect.Effect<AdapterStatus, AdapterExists | AdaptersUnsupported | AdapterLoadFailed | ModelLoading | ModelNotFound | ModelUnloading>
  /** Undeclares `model:adapter`; its context is released at once when idle, else when its last request ends. */
  readonly remove: (model: string, adapter: string) => Effect.Effect<AdapterDeclaration, ModelNotFound>
}

const engineOf = (context: Context.Context<RequestScheduler | Backend | SchedulerMetrics>): Engine => ({
  backend: Context.get(context, Backend),
  scheduler: Context.get(context, RequestScheduler),
  metrics: Context.get(context, SchedulerMetrics)
})

/** A stream that ends a request at once with `finishReason` and `error`, having generated nothing. */
const endedWith = (
  request: GenerationRequest,
  finishReason: "timeout" | "error",
  error: StageTimedOut | DecodeFailed
): Stream.Stream<GenerationEvent> =>
  Stream.make(GenerationEvent.Finished({ finishReason, usage: { promptTokens: request.prompt.length, completionTokens: 0, cachedTokens: 0 }, error }))

/**
 * LoRA adapters of the local models, each served in a context of its own on its model's shared weights. At most
 * `maxAdapters` contexts exist: a request for an adapter without one takes the least recently used idle context's
 * place, and when every context has requests it waits (bounded and timed like the base model's queue) until one is
 * idle. A context is never released while a request holds it.
 */
export class AdapterContexts extends Context.Tag("weft/AdapterContexts")<AdapterContexts, AdapterContextsShape>() {
  static layer = (settings: AdapterSettings): Layer.Layer<AdapterContexts, never, ModelRegistry> =>
    Layer.scoped(
      AdapterContexts,
      Effect.gen(function*() {
        const registry = yield* ModelRegistry
        const serviceScope = yield* Effect.scope
        // Invariant: `declarations`, `live`, `waiting`, `changed` and every LiveContext's counters are read and written
        // only while holding `lock`; `live` holds at most `maxAdapters` contexts.
        const lock = yield* Effect.makeSemaphore(1)
        const declarations = new Map<string, AdapterDeclaration>()
        const live = new Map<string, LiveContext>()
        let waiting = 0
        let changed = yield* Deferred.make<void>()
        let clock = 0
        const locked = lock.withPermits(1)
        for (const declaration of settings.adapters) declarations.set(adapterId(declaration.model, declaration.name), declaration)

        /** Wakes every waiter to try again (a context went idle or away). Under the lock. */
        const signal = Effect.gen(function*() {
          yield* Deferred.succeed(changed, undefined)
          changed = yield* Deferred.make<void>()
        })

        const close = (context: LiveContext) => Scope.close(context.scope, Exit.void)

        yield* Effect.addFinalizer(() => Effect.forEach([...live.values()], close, { discard: true }))

        const statusOf = (id: string, declaration: AdapterDeclaration): AdapterStatus => {
          const context = live.get(id)
          return {
            ...declaration,
            id,
            state: context === undefined ? "unloaded" : context.loaded ? "loaded" : "loading",
            requests: context?.leases ?? 0
          }
        }

        const list = locked(Effect.sync(() => [...declarations].map(([id, declaration]) => statusOf(id, declaration))))

        const idsOf = (model: string) =>
          locked(Effect.sync(() => [...declarations.values()].filter((one) => one.model === model).map((one) => adapterId(one.model, one.name))))

        /** Builds `context`'s engine in its scope; a failure takes it out of `live` again. Runs on its own fiber. */
        const build = (context: LiveContext) =>
          Effect.gen(function*() {
            const open = context.base.backend.adapters?.open
            const backend = open === undefined
              ? Layer.fail(new AdapterLoadFailed({ path: context.declaration.path, message: "this model does not take LoRA adapters" }))
              : Layer.scoped(
                Backend,
                Effect.map(open(context.declaration), (backend) => ({ ...backend, info: { ...backend.info, id: context.id } }))
              )
            const exit = yield* Layer.buildWithScope(
              observedEngineLayer(schedulerLayer(backend, context.base.scheduler.settings)),
              context.scope
            ).pipe(Effect.map(engineOf), Effect.exit)
            if (Exit.isFailure(exit)) {
              yield* Effect.logError("adapter context failed to start", exit.cause).pipe(Effect.annotateLogs({ adapter: context.id }))
              yield* locked(Effect.gen(function*() {
                if (live.get(context.id) === context) live.delete(context.id)
                yield* signal
              }))
              yield* close(context)
            } else {
              yield* locked(Effect.sync(() => {
                context.loaded = true
              }))
              yield* Effect.logInfo("adapter context ready").pipe(Effect.annotateLogs({ adapter: context.id, path: context.declaration.path }))
            }
            yield* Deferred.done(context.engine, exit)
          })

        /** An idle context of `model` made on an engine since replaced, else the least recently used idle context. */
        const idleVictim = (model: string, base: Engine): LiveContext | undefined => {
          let victim: LiveContext | undefined
          for (const context of live.values()) {
            if (context.leases > 0) continue
            if (context.declaration.model === model && context.base !== base) return context
            if (victim === undefined || context.lastUsed < victim.lastUsed) victim = context
          }
          return victim
        }

        /** Takes a lease on `id`'s context, making one (in place of an idle one) when it has none. Under the lock. */
        const reserve = (id: string, base: Engine, queueLimit: number) =>
          Effect.gen(function*() {
            const declaration = declarations.get(id)
            if (declaration === undefined) return Reservation.Gone()
            const evicted: Array<LiveContext> = []
            const found = live.get(id)
            if (found !== undefined && found.base === base) {
              found.leases += 1
              found.lastUsed = clock++
              return Reservation.Leased({ context: found, build: false, evicted })
            }
            if (found !== undefined) {
              // Made on an engine since unloaded: replace it once its requests are done.
              if (found.leases > 0) return waitOrFull(queueLimit)
              live.delete(id)
              evicted.push(found)
            }
            if (live.size >= settings.maxAdapters) {
              const victim = idleVictim(declaration.model, base)
              if (victim === undefined) return waitOrFull(queueLimit)
              live.delete(victim.id)
              evicted.push(victim)
            }
            const context: LiveContext = {
              id,
              declaration,
              base,
              scope: yield* Scope.make(),
              engine: yield* Deferred.make<Engine, AdapterLoadFailed>(),
              leases: 1,
              lastUsed: clock++,
              loaded: false
            }
            live.set(id, context)
            return Reservation.Leased({ context, build: true, evicted })
          })

        const waitOrFull = (queueLimit: number): Reservation => {
          if (waiting >= queueLimit) return Reservation.Full({ queued: waiting })
          waiting += 1
          return Reservation.Wait({ signal: changed })
        }

        /** Gives a lease back; the last one of an undeclared (or stale) context releases it. */
        const release = (context: LiveContext) =>
          Effect.gen(function*() {
            const retired = yield* locked(Effect.gen(function*() {
              context.leases -= 1
              context.lastUsed = clock++
              if (context.leases > 0) return false
              const retire = live.get(context.id) === context && declarations.get(context.id) !== context.declaration
              if (retire) live.delete(context.id)
              yield* signal
              return retire
            }))
            if (retired) yield* close(context)
          })

        /** A lease on `id`'s context for the caller's scope, and its engine once ready. */
        const lease = (id: string, base: Engine) =>
          Effect.uninterruptibleMask((restore) =>
            Effect.gen(function*() {
              const queueLimit = base.scheduler.settings.maxQueue
              while (true) {
                const reservation = yield* locked(reserve(id, base, queueLimit))
                switch (reservation._tag) {
                  case "Gone":
                    return yield* new ModelNotFound({ model: id })
                  case "Full":
                    return yield* new QueueFull({ queued: reservation.queued, limit: queueLimit, retryAfterSeconds: 1 })
                  case "Wait":
                    yield* restore(Deferred.await(reservation.signal)).pipe(
                      Effect.ensuring(locked(Effect.sync(() => {
                        waiting -= 1
                      })))
                    )
                    continue
                  case "Leased": {
                    const { context } = reservation
                    yield* Effect.addFinalizer(() => release(context))
                    yield* Effect.forEach(reservation.evicted, (victim) =>
                      Effect.zipRight(
                        close(victim),
                        Effect.logInfo("adapter context released").pipe(Effect.annotateLogs({ adapter: victim.id, for: id }))
                      ), { discard: true })
                    // Interruptible: forked here it would inherit the mask, and so would the engine's own fibers.
                    if (reservation.build) yield* Effect.forkIn(Effect.interruptible(build(context)), serviceScope)
                    return yield* restore(Deferred.await(context.engine))
                  }
                }
              }
            })
          )

        /** The adapter engine's scheduler: each submission first leases the context, within the queue's time limit. */
        const adapterScheduler = (id: string, base: Engine): RequestScheduler =>
          RequestScheduler.make({
            ...base.scheduler,
            submit: (request) =>
              Stream.unwrapScoped(Effect.gen(function*() {
                const limits = effectiveTimeouts(base.scheduler.settings.timeouts, request.timeouts)
                const started = yield* Clock.currentTimeMillis
                const queueMs = limits.queueMs
                const leased = yield* lease(id, base).pipe(
                  (waiting) =>
                    queueMs === undefined
                      ? waiting
                      : Effect.timeoutFail(waiting, { duration: queueMs, onTimeout: () => new StageTimedOut({ stage: "queue", limitMs: queueMs }) }),
                  Effect.either
                )
                if (Either.isLeft(leased)) {
                  const error = leased.left
                  if (error instanceof QueueFull) return Stream.fail(error)
                  if (error instanceof StageTimedOut) return endedWith(request, "timeout", error)
                  const message = error instanceof AdapterLoadFailed ? `adapter ${id}: ${error.message}` : error.message
                  return endedWith(request, "error", new DecodeFailed({ slot: -1, stage: "prefill", message, cause: error }))
                }
                // The time spent waiting for the context counts against the request's queue and total limits.
                const waited = (yield* Clock.currentTimeMillis) - started
                const remaining = (limit: number | undefined) => (limit === undefined ? undefined : Math.max(1, limit - waited))
                return leased.right.scheduler.submit({
                  ...request,
                  timeouts: { ...request.timeouts, queueMs: remaining(limits.queueMs), totalMs: remaining(limits.totalMs) }
                })
              }))
          })

        const resolve = (model: string, adapter: string) =>
          Effect.gen(function*() {
            const id = adapterId(model, adapter)
            const base = yield* registry.resolve(model)
            const declared = yield* locked(Effect.sync(() => declarations.has(id)))
            if (!declared || base.backend.adapters === undefined) return yield* new ModelNotFound({ model: id })
            return {
              backend: { ...base.backend, info: { ...base.backend.info, id }, adapters: undefined },
              scheduler: adapterScheduler(id, base),
              metrics: base.metrics
            } satisfies Engine
          })

        const add = (declaration: AdapterDeclaration) =>
          Effect.gen(function*() {
            const id = adapterId(declaration.model, declaration.name)
            const base = yield* registry.resolve(declaration.model)
            const support = base.backend.adapters
            if (support === undefined) return yield* new AdaptersUnsupported({ model: declaration.model })
            yield* support.check(declaration)
            return yield* locked(Effect.gen(function*() {
              if (declarations.has(id) || live.has(id)) return yield* new AdapterExists({ id })
              declarations.set(id, declaration)
              return statusOf(id, declaration)
            }))
          })

        const remove = (model: string, adapter: string) =>
          Effect.gen(function*() {
            const id = adapterId(model, adapter)
            const { declaration, idle } = yield* locked(Effect.gen(function*() {
              const declaration = declarations.get(id)
              if (declaration === undefined) return yield* new ModelNotFound({ model: id })
              declarations.delete(id)
              const context = live.get(id)
              const idle = context !== undefined && context.leases === 0 ? context : undefined
              if (idle !== undefined) live.delete(id)
              // Waiters for it find it gone.
              yield* signal
              return { declaration, idle }
            }))
            if (idle !== undefined) yield* close(idle)
            return declaration
          })

        return { list, idsOf, resolve, add, remove } satisfies AdapterContextsShape
      })
    )
}
