import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, FiberMap, FiberRef, HashMap, Mailbox, Option, PubSub, Random, Stream, SubscriptionRef } from "effect"
import type { Scope } from "effect"
import { Backend, DecodeFailed } from "../engine/Backend.js"
import type { StepResult } from "../engine/Backend.js"
import { SeqPool } from "../engine/SeqPool.js"
import type { SeqPoolStats } from "../engine/SeqPool.js"
import { TextAssembler } from "../engine/TextAssembler.js"
import { AdmissionQueue } from "./AdmissionQueue.js"
import { GenerationEvent } from "./GenerationRequest.js"
import type { FinishReason, GenerationRequest, Priority, StageTimeouts } from "./GenerationRequest.js"
import { FinishedRing, transition } from "./RequestLifecycle.js"
import type { CancelReason, LifecycleTransition, RequestRecord, RequestState } from "./RequestLifecycle.js"
import { SchedulerConfig } from "./SchedulerConfig.js"
import { PromptEmpty, PromptTokenInvalid, PromptTooLong, QueueFull, ShuttingDown, StageTimedOut } from "./SchedulerErrors.js"
import type { AdmissionRejected } from "./SchedulerErrors.js"

/**
 * What the scheduler publishes as requests move: every state change (admission's carries the prompt), the first
 * step of each request, and every generated token.
 */
export type SchedulerEvent =
  | ({ readonly _tag: "Transition"; readonly prompt?: ReadonlyArray<number> | undefined } & LifecycleTransition)
  | { readonly _tag: "FirstToken"; readonly requestId: string; readonly at: number }
  | { readonly _tag: "Token"; readonly requestId: string; readonly at: number; readonly token: number }

/** Who submitted a request: its trace and log annotations, kept on the record for observers. */
type Origin = Pick<RequestRecord, "traceId" | "spanId" | "annotations">

const currentOrigin: Effect.Effect<Origin> = Effect.zipWith(
  Effect.option(Effect.currentParentSpan),
  FiberRef.get(FiberRef.currentLogAnnotations),
  (span, annotations): Origin => ({
    traceId: Option.isSome(span) ? span.value.traceId : undefined,
    spanId: Option.isSome(span) ? span.value.spanId : undefined,
    annotations: HashMap.size(annotations) === 0 ? undefined : Object.fromEntries(annotations)
  })
)

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

interface Outcome {
  readonly finishReason: FinishReason
}

/** A request's mutable progress, read when it ends however it ends. */
interface Progress {
  completionTokens: number
  /** Prompt tokens whose KV was reused from the prefix cache. */
  cachedTokens: number
}

const secondsPerRequestPrior = 1

const effectiveTimeouts = (server: StageTimeouts, request: StageTimeouts | undefined): StageTimeouts => {
  const pick = (serverLimit: number | undefined, requestLimit: number | undefined) =>
    serverLimit === undefined ? requestLimit : requestLimit === undefined ? serverLimit : Math.min(serverLimit, requestLimit)
  return {
    queueMs: pick(server.queueMs, request?.queueMs),
    firstTokenMs: pick(server.firstTokenMs, request?.firstTokenMs),
    totalMs: pick(server.totalMs, request?.totalMs)
  }
}

const withStageLimit = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  stage: StageTimedOut["stage"],
  limitMs: number | undefined
): Effect.Effect<A, E | StageTimedOut, R> =>
  limitMs === undefined
    ? effect
    : Effect.timeoutFail(effect, { duration: Duration.millis(limitMs), onTimeout: () => new StageTimedOut({ stage, limitMs }) })

/**
 * Runs every generation as its own fiber: admits requests into a bounded priority queue, hands out sequence
 * slots in queue order, streams events back, and enforces per-stage timeouts, cancellation and graceful shutdown.
 */
export class RequestScheduler extends Effect.Service<RequestScheduler>()("weft/RequestScheduler", {
  scoped: Effect.gen(function*() {
    const settings = yield* SchedulerConfig
    const backend = yield* Backend
    const pool = yield* SeqPool
    const fibers = yield* FiberMap.make<string, void>()
    const events = yield* PubSub.unbounded<SchedulerEvent>()
    const liveCount = yield* SubscriptionRef.make(0)
    const queue = new AdmissionQueue(settings.agingMs)
    const live = new Map<string, RequestRecord>()
    const recent = new FinishedRing(settings.recentCapacity)
    /** The one queued request allowed to wait on the pool: slots go out strictly in queue order. */
    let turnHolder: string | undefined
    let draining = false
    let secondsPerRequest = secondsPerRequestPrior

    const queuedCount = () => {
      let count = 0
      for (const record of live.values()) if (record.state === "Queued") count++
      return count
    }

    /** Picks the next request only when a slot is free, so a later high-priority arrival can still overtake. */
    const grantNextTurn = Effect.map(Clock.currentTimeMillis, (now) => {
      if (turnHolder !== undefined || pool.freeNow() === 0) return
      const next = queue.takeNext(now)
      if (next === undefined) return
      turnHolder = next.id
      next.grantTurn()
    })

    /** Gives up the turn (or the place in the queue) of `id`, letting the next request wait for a slot. */
    const leaveQueue = (id: string) =>
      Effect.suspend(() => {
        queue.remove(id)
        if (turnHolder === id) turnHolder = undefined
        return grantNextTurn
      })

    const publishTransition = (from: RequestState | undefined, record: RequestRecord, at: number, prompt?: ReadonlyArray<number>) =>
      PubSub.publish(events, { _tag: "Transition", from, to: record.state, at, record, prompt })

    const moveTo = (id: string, to: RequestState, changes: (now: number) => Partial<RequestRecord> = () => ({})) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const before = live.get(id)!
        const after = transition(before, to, changes(now))
        const terminal = to !== "Queued" && to !== "Running"
        if (terminal) {
          live.delete(id)
          recent.add(after)
          if (to === "Completed") {
            const seconds = (now - after.enqueuedAt) / 1000
            secondsPerRequest = 0.8 * secondsPerRequest + 0.2 * seconds
          }
        } else {
          live.set(id, after)
        }
        return Effect.zipRight(
          terminal ? SubscriptionRef.update(liveCount, (count) => count - 1) : Effect.void,
          publishTransition(before.state, after, now)
        )
      })

    const patch = (id: string, changes: Partial<RequestRecord>) =>
      Effect.sync(() => {
        const record = live.get(id)
        if (record !== undefined) live.set(id, { ...record, ...changes })
      })

    const retryAfterSeconds = (queued: number) =>
      Math.max(1, Math.ceil(((queued + 1) / backend.info.parallel) * secondsPerRequest))

    const reject = (request: GenerationRequest, origin: Origin, error: AdmissionRejected) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const record: RequestRecord = {
          ...origin,
          id: request.id,
          priority: request.priority ?? "normal",
          state: "Rejected",
          promptTokens: request.prompt.length,
          completionTokens: 0,
          enqueuedAt: now,
          finishedAt: now,
          detail: error._tag
        }
        recent.add(record)
        return Effect.zipRight(publishTransition(undefined, record, now, request.prompt), Effect.fail(error))
      })

    /** Checks admission and enqueues atomically (no other fiber runs between the check and the enqueue). */
    const admit = (request: GenerationRequest, origin: Origin, turn: Deferred.Deferred<void>) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        if (live.has(request.id)) return Effect.dieMessage(`Request id ${request.id} is already live`)
        if (draining) return reject(request, origin, new ShuttingDown())
        if (request.prompt.length === 0) return reject(request, origin, new PromptEmpty())
        if (request.prompt.length > backend.info.contextSize) {
          return reject(request, origin, new PromptTooLong({ promptTokens: request.prompt.length, contextSize: backend.info.contextSize }))
        }
        const invalidToken = request.prompt.find((token) => !Number.isInteger(token) || token < 0 || token >= backend.info.vocabSize)
        if (invalidToken !== undefined) {
          return reject(request, origin, new PromptTokenInvalid({ token: invalidToken, vocabSize: backend.info.vocabSize }))
        }
        // A request that a free slot can take at once does not wait, so free slots add to the queue's room.
        const queued = queuedCount()
        if (queued >= settings.maxQueue + pool.freeNow()) {
          return reject(request, origin, new QueueFull({ queued, limit: settings.maxQueue, retryAfterSeconds: retryAfterSeconds(queued) }))
        }
        const record: RequestRecord = {
          ...origin,
          id: request.id,
          priority: request.priority ?? "normal",
          state: "Queued",
          promptTokens: request.prompt.length,
          completionTokens: 0,
          enqueuedAt: now
        }
        live.set(request.id, record)
        queue.add({
          id: request.id,
          priority: record.priority,
          enqueuedAt: now,
          grantTurn: () => Deferred.unsafeDone(turn, Exit.void)
        })
        return Effect.all([
          SubscriptionRef.update(liveCount, (count) => count + 1),
          publishTransition(undefined, record, now, request.prompt),
          grantNextTurn
        ])
      })

    const generate = (
      request: GenerationRequest,
      seed: number,
      limits: StageTimeouts,
      turn: Deferred.Deferred<void>,
      mailbox: Mailbox.Mailbox<GenerationEvent>,
      progress: Progress
    ): Effect.Effect<Outcome, StageTimedOut | DecodeFailed, Scope.Scope> =>
      Effect.gen(function*() {
        const lease = yield* withStageLimit(
          Effect.zipRight(
            Deferred.await(turn).pipe(Effect.withSpan("RequestScheduler.queueWait")),
            pool.acquire(request.id, { prompt: request.prompt, cacheKey: request.cacheKey })
          ).pipe(
            Effect.ensuring(leaveQueue(request.id))
          ),
          "queue",
          limits.queueMs
        )
        progress.cachedTokens = lease.reusedTokens
        yield* moveTo(request.id, "Running", (now) => ({ startedAt: now, slot: lease.slot, cachedTokens: lease.reusedTokens }))
        yield* mailbox.offer(
          GenerationEvent.Started({
            requestId: request.id,
            slot: lease.slot,
            seed,
            promptTokens: request.prompt.length,
            cachedTokens: lease.reusedTokens
          })
        )

        const suffix = request.prompt.slice(lease.reusedTokens)
        const generation = yield* backend.start(lease.slot, suffix, { ...request.sampling, seed })
        const assembler = new TextAssembler(backend.detokenize, request.stop ?? [], request.prompt.slice(-4))
        const contextSize = backend.info.contextSize
        let unreportedTokens = 0
        let cells = 0

        const emit = (text: string) => {
          if (text.length === 0) return Effect.void
          const tokens = unreportedTokens
          unreportedTokens = 0
          return mailbox.offer(GenerationEvent.Delta({ text, tokens }))
        }
        const finishWithRest = (finishReason: FinishReason) => {
          const rest = assembler.finish()
          return Effect.as(emit(rest.text), { finishReason: rest.stopped ? "stop" : finishReason } satisfies Outcome)
        }

        const firstStep = withStageLimit(generation.next, "firstToken", limits.firstTokenMs).pipe(
          Effect.tap(() =>
            Effect.flatMap(Clock.currentTimeMillis, (now) =>
              Effect.zipRight(
                patch(request.id, { firstTokenAt: now }),
                PubSub.publish(events, { _tag: "FirstToken", requestId: request.id, at: now })
              )
            )
          ),
          Effect.withSpan("RequestScheduler.prefill", { attributes: { "weft.prompt_tokens": suffix.length } })
        )

        const atLimit = () => request.maxTokens !== undefined && progress.completionTokens >= request.maxTokens

        /** Takes in one step's result; an outcome when it ends the generation. */
        const consume = (step: StepResult) =>
          Effect.gen(function*() {
            cells = step.cells
            yield* lease.setCells(cells)
            if (step._tag === "EndOfGeneration") return yield* finishWithRest("stop")
            progress.completionTokens += 1
            unreportedTokens += 1
            yield* patch(request.id, { completionTokens: progress.completionTokens })
            yield* Effect.flatMap(Clock.currentTimeMillis, (now) =>
              PubSub.publish(events, { _tag: "Token", requestId: request.id, at: now, token: step.token })
            )
            const out = assembler.push(step.token)
            yield* emit(out.text)
            return out.stopped ? ({ finishReason: "stop" } satisfies Outcome) : undefined
          })

        if (atLimit()) return yield* finishWithRest("length")
        const firstOutcome = yield* Effect.flatMap(firstStep, consume)
        if (firstOutcome !== undefined) return firstOutcome
        return yield* Effect.gen(function*() {
          while (true) {
            if (atLimit()) return yield* finishWithRest("length")
            // Each later step writes one more cell; a full context ends the generation instead of shifting it.
            if (cells + 1 > contextSize) return yield* finishWithRest("length")
            const outcome = yield* Effect.flatMap(generation.next, consume)
            if (outcome !== undefined) return outcome
          }
        }).pipe(Effect.withSpan("RequestScheduler.decode"))
      })

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
        let state: RequestState
        let finishReason: FinishReason
        let error: StageTimedOut | DecodeFailed | undefined
        let detail: string | undefined
        if (Exit.isSuccess(exit)) {
          state = "Completed"
          finishReason = exit.value.finishReason
        } else if (Cause.isInterruptedOnly(exit.cause)) {
          state = "Cancelled"
          finishReason = "cancelled"
        } else {
          const failure = Cause.failureOption(exit.cause)
          if (Option.isSome(failure) && failure.value._tag === "StageTimedOut") {
            state = "TimedOut"
            finishReason = "timeout"
            error = failure.value
          } else {
            state = "Failed"
            finishReason = "error"
            error = Option.isSome(failure)
              ? failure.value
              : new DecodeFailed({ slot: -1, stage: "decode", message: "internal error" })
            if (Option.isNone(failure)) yield* Effect.logError("Request failed with a defect", exit.cause)
          }
          detail = error.message
        }
        const timeoutStage = error?._tag === "StageTimedOut" ? error.stage : undefined
        const cancelReason = state === "Cancelled" ? (live.get(request.id)?.cancelReason ?? "client") : undefined
        yield* moveTo(request.id, state, (now) => ({
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

    /** Admits `request` and streams its events; closing the stream early cancels the request. */
    const submit = (request: GenerationRequest): Stream.Stream<GenerationEvent, AdmissionRejected> =>
      Stream.unwrapScoped(
        Effect.gen(function*() {
          const turn = yield* Deferred.make<void>()
          yield* admit(request, yield* currentOrigin, turn)
          const seed = request.sampling.seed ?? (yield* Random.nextIntBetween(0, 2 ** 31 - 1))
          const limits = effectiveTimeouts(settings.timeouts, request.timeouts)
          const mailbox = yield* Mailbox.make<GenerationEvent>()
          const progress: Progress = { completionTokens: 0, cachedTokens: 0 }
          const run = Effect.scoped(generate(request, seed, limits, turn, mailbox, progress)).pipe(
            Effect.withSpan("RequestScheduler.generation", {
              attributes: { "weft.request_id": request.id, "weft.prompt_tokens": request.prompt.length }
            }),
            Effect.ensuring(grantNextTurn),
            (body) => withStageLimit(body, "total", limits.totalMs),
            Effect.onExit((exit) => finish(request, mailbox, progress, exit)),
            Effect.exit,
            Effect.asVoid
          )
          yield* FiberMap.run(fibers, request.id, run)
          yield* Effect.addFinalizer(() =>
            Effect.zipRight(markCancelReason(request.id, "client"), FiberMap.remove(fibers, request.id))
          )
          return Mailbox.toStream(mailbox)
        })
      )

    const markCancelReason = (id: string, reason: CancelReason) =>
      Effect.sync(() => {
        const record = live.get(id)
        if (record !== undefined && record.cancelReason === undefined) live.set(id, { ...record, cancelReason: reason })
      })

    /** Cancels a queued or running request; true when there was one to cancel. */
    const cancel = Effect.fn("RequestScheduler.cancel")(function*(id: string) {
      if (!live.has(id)) return false
      yield* markCancelReason(id, "cancel")
      yield* FiberMap.remove(fibers, id)
      return true
    })

    const awaitIdle = liveCount.changes.pipe(Stream.takeUntil((count) => count === 0), Stream.runDrain)

    /** Stops admitting, lets in-flight requests run for `graceMs`, then interrupts what is left; slots are all free after. */
    const shutdown = Effect.fn("RequestScheduler.shutdown")(function*(graceMs: number = settings.shutdownGraceMs) {
      draining = true
      if (live.size > 0 && graceMs > 0) yield* Effect.timeoutOption(awaitIdle, Duration.millis(graceMs))
      for (const id of live.keys()) yield* markCancelReason(id, "shutdown")
      yield* FiberMap.clear(fibers)
    })

    const inspect = Effect.map(Clock.currentTimeMillis, (now): SchedulerSnapshot => {
      const view = (record: RequestRecord): LiveRequest => ({
        id: record.id,
        state: record.state,
        priority: record.priority,
        slot: record.slot,
        ageMs: now - record.enqueuedAt,
        completionTokens: record.completionTokens
      })
      const records = [...live.values()]
      return {
        queued: records.filter((record) => record.state === "Queued").map(view),
        running: records.filter((record) => record.state === "Running").map(view),
        recent: recent.list()
      }
    })

    const stats = Effect.map(pool.stats, (slots): SchedulerStats => ({
      queued: queuedCount(),
      queueLimit: settings.maxQueue,
      running: live.size - queuedCount(),
      draining,
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
      events,
      isDraining: Effect.sync(() => draining),
      modelInfo: backend.info
    } as const
  })
}) {}
