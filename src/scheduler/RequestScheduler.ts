import { Clock, Deferred, Duration, Effect, Exit, Fiber, FiberMap, HashMap, Mailbox, Option, Random, Stream } from "effect"
import type { Scope } from "effect"
import { Backend } from "../engine/Backend.js"
import type { DecodeFailed } from "../engine/Backend.js"
import { SeqPool } from "../engine/SeqPool.js"
import type { SeqPoolStats } from "../engine/SeqPool.js"
import { currentOrigin, makeAdmission } from "./Admission.js"
import { makeEmbeddingGate } from "./EmbeddingGate.js"
import { effectiveTimeouts, runGeneration, withStageLimit } from "./GenerationLoop.js"
import type { Progress } from "./GenerationLoop.js"
import { GenerationEvent } from "./GenerationRequest.js"
import type { GenerationRequest, Priority, StageTimeouts } from "./GenerationRequest.js"
import type { RequestRecord, RequestState } from "./RequestLifecycle.js"
import { outcomeOf } from "./RequestOutcome.js"
import type { Outcome } from "./RequestOutcome.js"
import { makeRequestRegistry, queuedIn } from "./RequestRegistry.js"
import { SchedulerConfig } from "./SchedulerConfig.js"
import type { AdmissionRejected, StageTimedOut } from "./SchedulerErrors.js"

export type { GeneratedToken, SchedulerEvent, TokenObserver } from "./RequestRegistry.js"

/** A queued or running request as `inspect()` shows it. */
export interface LiveRequest {
  readonly id: string
  readonly state: RequestState
  readonly priority: Priority
  readonly slot: number | undefined
  readonly ageMs: number
  readonly completionTokens: number
}

export interface SchedulerSnapshot {
  readonly queued: ReadonlyArray<LiveRequest>
  readonly running: ReadonlyArray<LiveRequest>
  /** Recently finished requests, newest first. */
  readonly recent: ReadonlyArray<RequestRecord>
}

export interface SchedulerStats {
  readonly queued: number
  readonly queueLimit: number
  readonly running: number
  readonly draining: boolean
  readonly slots: SeqPoolStats
}

/** What opens each stream `submit` gave back: its mailbox, without a `Stream` in between. */
const openers = new WeakMap<Stream.Stream<GenerationEvent, AdmissionRejected>, Effect.Effect<Mailbox.ReadonlyMailbox<GenerationEvent>, AdmissionRejected, Scope.Scope>>()

/**
 * How to open `events` as a mailbox, when they are exactly a scheduler's `submit` (not a wrapper such as an adapter's
 * lease, which must run first): reading the mailbox in the caller's scope is then the same as running the stream.
 */
export const openedBy = (events: Stream.Stream<GenerationEvent, unknown>) =>
  Option.fromNullable(openers.get(events as Stream.Stream<GenerationEvent, AdmissionRejected>))

/**
 * Runs every generation as its own fiber: admits requests into a bounded priority queue, hands out sequence
 * slots in queue order, streams events back, and enforces per-stage timeouts, cancellation and graceful shutdown.
 * The parts: `RequestRegistry` (records and transitions), `Admission` (checks, queue, turns), `GenerationLoop` (one
 * request's run) and `outcomeOf` (how a run's exit becomes its final state).
 */
export class RequestScheduler extends Effect.Service<RequestScheduler>()("weft/RequestScheduler", {
  scoped: Effect.gen(function*() {
    const settings = yield* SchedulerConfig
    const backend = yield* Backend
    const pool = yield* SeqPool
    const fibers = yield* FiberMap.make<string, void>()
    const registry = yield* makeRequestRegistry(settings.recentCapacity)
    const admission = yield* makeAdmission(settings, backend.info, pool, registry)
    const context = { backend, pool, registry, leaveQueue: admission.leaveQueue }
    // Each admitted request's progress, until its stream closes: a live record's token count is read from here rather
    // than written into the registry on every token.
    const progressOf = new Map<string, Progress>()
    const embeddings = yield* makeEmbeddingGate(settings, Effect.map(registry.state, (state) => state.draining))

    const finish = (
      request: GenerationRequest,
      mailbox: Mailbox.Mailbox<GenerationEvent>,
      progress: Progress,
      exit: Exit.Exit<Outcome, StageTimedOut | DecodeFailed>
    ) =>
      Effect.gen(function*() {
        const usage = {
          promptTokens: request.prompt.length,
          completionTokens: progress.completionTokens,
          cachedTokens: progress.cachedTokens
        }
        const { defect, detail, error, finishReason, state, timeoutStage } = outcomeOf(exit)
        if (defect && Exit.isFailure(exit)) yield* Effect.logError("Request failed with a defect", exit.cause)
        const cancelReason = state === "Cancelled"
          ? Option.getOrUndefined(yield* registry.live(request.id))?.cancelReason ?? "client"
          : undefined
        yield* registry.moveTo(request.id, state, (now) => ({
          finishedAt: now,
          finishReason,
          completionTokens: progress.completionTokens,
          detail,
          cancelReason,
          timeoutStage
        }))
        yield* mailbox.offer(GenerationEvent.Finished({ finishReason, usage, error, cancelReason }))
        yield* mailbox.end
      })

    /**
     * Admits `request` and gives back the mailbox its events arrive in; closing the scope cancels the request. Reached
     * only through `submit`'s stream and `openedBy`, so a wrapper of `submit` (an adapter's lease) cannot be bypassed.
     * The answer of a single plain choice reads the mailbox directly: a `Stream` over it cost every token about 20
     * more Effect steps, and every request about a thousand.
     */
    const open = (request: GenerationRequest): Effect.Effect<Mailbox.ReadonlyMailbox<GenerationEvent>, AdmissionRejected, Scope.Scope> =>
      Effect.gen(function*() {
        const turn = yield* Deferred.make<void>()
        yield* admission.admit(request, yield* currentOrigin, turn)
        const seed = request.sampling.seed ?? (yield* Random.nextIntBetween(0, 2 ** 31 - 1))
        const limits = effectiveTimeouts(settings.timeouts, request.timeouts)
        const mailbox = yield* Mailbox.make<GenerationEvent>()
        const progress: Progress = { completionTokens: 0, cachedTokens: 0 }
        progressOf.set(request.id, progress)
        const run = Effect.scoped(runGeneration(context, request, seed, limits, turn, mailbox, progress)).pipe(
          Effect.withSpan("RequestScheduler.generation", {
            attributes: { "weft.request_id": request.id, "weft.prompt_tokens": request.prompt.length }
          }),
          Effect.ensuring(admission.grantNextTurn),
          (body) => withStageLimit(body, "total", limits.totalMs),
          Effect.onExit((exit) => finish(request, mailbox, progress, exit)),
          Effect.exit,
          Effect.asVoid
        )
        yield* FiberMap.run(fibers, request.id, run)
        yield* Effect.addFinalizer(() =>
          Effect.zipRight(registry.markCancelReason(request.id, "client"), FiberMap.remove(fibers, request.id)).pipe(
            Effect.ensuring(Effect.sync(() => progressOf.delete(request.id)))
          )
        )
        return mailbox
      })

    /** Admits `request` and streams its events; closing the stream early cancels the request. */
    const submit = (request: GenerationRequest): Stream.Stream<GenerationEvent, AdmissionRejected> => {
      const opened = open(request)
      const events = Stream.unwrapScoped(Effect.map(opened, Mailbox.toStream))
      openers.set(events, opened)
      return events
    }

    /** Cancels a queued or running request; true when there was one to cancel. */
    const cancel = Effect.fn("RequestScheduler.cancel")(function*(id: string) {
      if (Option.isNone(yield* registry.live(id))) return false
      yield* registry.markCancelReason(id, "cancel")
      yield* FiberMap.remove(fibers, id)
      return true
    })

    /** Stops admitting, lets in-flight requests run for `graceMs`, then interrupts what is left; slots are all free after. */
    const shutdown = Effect.fn("RequestScheduler.shutdown")(function*(graceMs: number = settings.shutdownGraceMs) {
      yield* registry.drain
      const live = (yield* registry.state).live
      if (HashMap.size(live) > 0 && graceMs > 0) yield* Effect.timeoutOption(registry.awaitIdle, Duration.millis(graceMs))
      for (const id of HashMap.keys((yield* registry.state).live)) yield* registry.markCancelReason(id, "shutdown")
      yield* FiberMap.clear(fibers)
    })

    const inspect = Effect.zipWith(Clock.currentTimeMillis, registry.state, (now, state): SchedulerSnapshot => {
      const view = (record: RequestRecord): LiveRequest => ({
        id: record.id,
        state: record.state,
        priority: record.priority,
        slot: record.slot,
        ageMs: now - record.enqueuedAt,
        completionTokens: progressOf.get(record.id)?.completionTokens ?? record.completionTokens
      })
      const records = [...HashMap.values(state.live)]
      return {
        queued: records.filter((record) => record.state === "Queued").map(view),
        running: records.filter((record) => record.state === "Running").map(view),
        recent: state.recent.slice().reverse()
      }
    })

    const stats = Effect.zipWith(pool.stats, registry.state, (slots, state): SchedulerStats => ({
      queued: queuedIn(state),
      queueLimit: settings.maxQueue,
      running: HashMap.size(state.live) - queuedIn(state),
      draining: state.draining,
      slots
    }))

    // Finalizers run uninterruptibly, so the grace timeout inside `shutdown` could never fire there: run it on its own fiber.
    yield* Effect.addFinalizer(() => Effect.flatMap(Effect.forkDaemon(Effect.interruptible(shutdown())), Fiber.join))

    return {
      submit,
      cancel,
      shutdown,
      inspect,
      stats,
      /** Lifecycle events; subscribe before submitting to see every one. */
      events: registry.events,
      /** Tells `observer` of every generated token while the scope lasts (see `TokenObserver`). */
      observeTokens: registry.observeTokens,
      isDraining: Effect.map(registry.state, (state) => state.draining),
      /** Erases the cached prefixes kept in free slots (memory pressure); running requests keep theirs. */
      evictCachedPrefixes: pool.evictCached,
      modelInfo: backend.info,
      /** The limits it runs with (an adapter's scheduler runs with its base model's). */
      settings,
      /** Embeddings of `inputs` (see `Backend.embed`), admitted beside generation with the same limits (see `makeEmbeddingGate`). */
      embed: (inputs: ReadonlyArray<ReadonlyArray<number>>, timeouts?: StageTimeouts) => embeddings.run(backend.embed(inputs), timeouts)
    } as const
  })
}) {}
