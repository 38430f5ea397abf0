import { Clock, Deferred, Effect, Exit, FiberRef, HashMap, Option, Ref } from "effect"
import type { BackendShape } from "../engine/Backend.js"
import type { SeqPool } from "../engine/SeqPool.js"
import { AdmissionQueue } from "./AdmissionQueue.js"
import type { GenerationRequest } from "./GenerationRequest.js"
import type { RequestRecord } from "./RequestLifecycle.js"
import { queuedIn } from "./RequestRegistry.js"
import type { AdmissionDecision, RegistryState, RequestRegistry } from "./RequestRegistry.js"
import type { SchedulerSettings } from "./SchedulerConfig.js"
import { PromptEmpty, PromptTokenInvalid, PromptTooLong, QueueFull, ShuttingDown } from "./SchedulerErrors.js"
import type { AdmissionRejected } from "./SchedulerErrors.js"

/** Who submitted a request: its trace and log annotations, kept on the record for observers. */
export type Origin = Pick<RequestRecord, "traceId" | "spanId" | "annotations">

/** The origin of the fiber that runs it. */
export const currentOrigin: Effect.Effect<Origin> = Effect.zipWith(
  Effect.option(Effect.currentParentSpan),
  FiberRef.get(FiberRef.currentLogAnnotations),
  (span, annotations): Origin => ({
    traceId: Option.isSome(span) ? span.value.traceId : undefined,
    spanId: Option.isSome(span) ? span.value.spanId : undefined,
    annotations: HashMap.size(annotations) === 0 ? undefined : Object.fromEntries(annotations)
  })
)

/** Why `request` cannot be admitted into `state`, if it cannot. */
const rejectionOf = (
  request: GenerationRequest,
  state: RegistryState,
  info: BackendShape["info"],
  settings: SchedulerSettings,
  freeSlots: number
): AdmissionRejected | undefined => {
  if (state.draining) return new ShuttingDown()
  if (request.prompt.length === 0) return new PromptEmpty()
  if (request.prompt.length > info.contextSize) {
    return new PromptTooLong({ promptTokens: request.prompt.length, contextSize: info.contextSize })
  }
  const invalidToken = request.prompt.find((token) => !Number.isInteger(token) || token < 0 || token >= info.vocabSize)
  if (invalidToken !== undefined) return new PromptTokenInvalid({ token: invalidToken, vocabSize: info.vocabSize })
  // A request that a free slot can take at once does not wait, so free slots add to the queue's room.
  const queued = queuedIn(state)
  if (queued >= settings.maxQueue + freeSlots) {
    const retryAfterSeconds = Math.max(1, Math.ceil(((queued + 1) / info.parallel) * state.secondsPerRequest))
    return new QueueFull({ queued, limit: settings.maxQueue, retryAfterSeconds })
  }
  return undefined
}

/**
 * Admission and turn granting: checks a request against the registry and enqueues it in one step, then hands the
 * turn to wait on the pool to one queued request at a time, in queue order, only while a slot is free.
 *
 * `turnHolder` is the one queued request allowed to wait on the pool. The queue is changed only inside updates of
 * `turnHolder`, so the queue and the turn always change together.
 */
export const makeAdmission = (settings: SchedulerSettings, info: BackendShape["info"], pool: SeqPool, registry: RequestRegistry) =>
  Effect.gen(function*() {
    const queue = new AdmissionQueue(settings.agingMs)
    const turnHolder = yield* Ref.make<string | undefined>(undefined)

    /** Picks the next request only when a slot is free, so a later high-priority arrival can still overtake. */
    const grantNextTurn = Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.flatMap(
        Ref.modify(turnHolder, (holder) => {
          if (holder !== undefined || pool.freeNow() === 0) return [undefined, holder]
          const next = queue.takeNext(now)
          return next === undefined ? [undefined, holder] : [next, next.id]
        }),
        (next) => (next === undefined ? Effect.void : Effect.sync(() => next.grantTurn()))
      ))

    /** Gives up the turn (or the place in the queue) of `id`, letting the next request wait for a slot. */
    const leaveQueue = (id: string) =>
      Effect.zipRight(
        Ref.update(turnHolder, (holder) => {
          queue.remove(id)
          return holder === id ? undefined : holder
        }),
        grantNextTurn
      )

    /** Checks admission and enqueues atomically; `turn` completes when the request may wait on the pool. */
    const admit = (request: GenerationRequest, origin: Origin, turn: Deferred.Deferred<void>) => {
      const decide = (state: RegistryState, now: number): AdmissionDecision<AdmissionRejected> => {
        if (HashMap.has(state.live, request.id)) return { _tag: "Duplicate", id: request.id }
        const error = rejectionOf(request, state, info, settings, pool.freeNow())
        const record: RequestRecord = {
          ...origin,
          id: request.id,
          priority: request.priority ?? "normal",
          state: error === undefined ? "Queued" : "Rejected",
          promptTokens: request.prompt.length,
          completionTokens: 0,
          enqueuedAt: now,
          ...(error === undefined ? {} : { finishedAt: now, detail: error._tag, rejection: error })
        }
        return error === undefined ? { _tag: "Admit", record } : { _tag: "Reject", record, error }
      }
      const enqueue = (record: RequestRecord) =>
        Ref.update(turnHolder, (holder) => {
          queue.add({
            id: record.id,
            priority: record.priority,
            enqueuedAt: record.enqueuedAt,
            grantTurn: () => Deferred.unsafeDone(turn, Exit.void)
          })
          return holder
        })
      return Effect.flatMap(
        registry.admit(request.prompt, decide, enqueue),
        (decided) => (decided._tag === "Reject" ? Effect.fail(decided.error) : grantNextTurn)
      )
    }

    return { admit, leaveQueue, grantNextTurn } as const
  })
