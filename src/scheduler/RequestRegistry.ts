import { Clock, Effect, HashMap, Option, PubSub, Ref, Stream, SubscriptionRef } from "effect"
import { isTerminal, transition } from "./RequestLifecycle.js"
import type { CancelReason, LifecycleTransition, RequestRecord, RequestState } from "./RequestLifecycle.js"

/**
 * What the scheduler publishes as requests move: every state change (admission's carries the prompt) and the first
 * step of each request. Generated tokens go to token observers instead (see `TokenObserver`).
 */
export type SchedulerEvent =
  | ({ readonly _tag: "Transition"; readonly prompt?: ReadonlyArray<number> | undefined } & LifecycleTransition)
  | { readonly _tag: "FirstToken"; readonly requestId: string; readonly at: number }

/** One generated token, as token observers are told of it. */
export interface GeneratedToken {
  /** The request's record as it started running. */
  readonly record: RequestRecord
  readonly at: number
  readonly token: number
}

/**
 * Told of every generated token, synchronously, on the generating fiber, before the request's next step: an event per
 * token on `events` woke every subscriber's fiber once per token, a large part of what a token cost. Observers keep
 * to quick bookkeeping and do not throw. Everything published about a request before its token (its admission and
 * start) may still be on its way to subscribers; everything after (its end) comes after the observers have seen it.
 */
export type TokenObserver = (token: GeneratedToken) => void

/** Everything the registry knows, replaced as a whole on every change. */
export interface RegistryState {
  /** Queued and running requests. */
  readonly live: HashMap.HashMap<string, RequestRecord>
  /** Finished and rejected requests, oldest first, at most `recentCapacity`. */
  readonly recent: ReadonlyArray<RequestRecord>
  /** Set once by shutdown; admission refuses everything after. */
  readonly draining: boolean
  /** Moving average of a completed request's time in the scheduler, for retry-after estimates. */
  readonly secondsPerRequest: number
}

/** What admission decides from one consistent view of the registry: a record to add, or a rejection to keep. */
export type AdmissionDecision<E> =
  | { readonly _tag: "Duplicate"; readonly id: string }
  | { readonly _tag: "Admit"; readonly record: RequestRecord }
  | { readonly _tag: "Reject"; readonly record: RequestRecord; readonly error: E }

const secondsPerRequestPrior = 1

export const queuedIn = (state: RegistryState): number => {
  let count = 0
  for (const record of HashMap.values(state.live)) if (record.state === "Queued") count++
  return count
}

/**
 * The records of every request and their transitions. The state lives in one `Ref` and the methods below are its
 * only writers; each change is one `Ref.modify`, so a decision (admission's checks, a transition's legality) and the
 * write it leads to cannot be split by another fiber. Every state change is then published on `events`, and
 * `liveCount` follows the number of live records.
 */
export const makeRequestRegistry = (recentCapacity: number) =>
  Effect.gen(function*() {
    const state = yield* Ref.make<RegistryState>({
      live: HashMap.empty(),
      recent: [],
      draining: false,
      secondsPerRequest: secondsPerRequestPrior
    })
    const events = yield* PubSub.unbounded<SchedulerEvent>()
    const tokenObservers = new Set<TokenObserver>()
    const liveCount = yield* SubscriptionRef.make(0)

    const remember = (recent: ReadonlyArray<RequestRecord>, record: RequestRecord) => {
      const next = [...recent, record]
      return next.length > recentCapacity ? next.slice(next.length - recentCapacity) : next
    }

    const publishTransition = (from: RequestState | undefined, record: RequestRecord, at: number, prompt?: ReadonlyArray<number>) =>
      PubSub.publish(events, { _tag: "Transition", from, to: record.state, at, record, prompt })

    /**
     * Admits or rejects in one step: `decide` sees the state as it is and nothing changes it before its answer is
     * written. Rejected records go straight to `recent`; an admitted one is handed to `enqueue` before it is published.
     */
    const admit = <E>(
      prompt: ReadonlyArray<number>,
      decide: (state: RegistryState, now: number) => AdmissionDecision<E>,
      enqueue: (record: RequestRecord) => Effect.Effect<void>
    ) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const decision = Ref.modify(state, (current): [AdmissionDecision<E>, RegistryState] => {
          const decided = decide(current, now)
          return decided._tag === "Duplicate"
            ? [decided, current]
            : decided._tag === "Admit"
            ? [decided, { ...current, live: HashMap.set(current.live, decided.record.id, decided.record) }]
            : [decided, { ...current, recent: remember(current.recent, decided.record) }]
        })
        return Effect.tap(decision, (decided) =>
          decided._tag === "Duplicate"
            ? Effect.dieMessage(`Request id ${decided.id} is already live`)
            : decided._tag === "Admit"
            ? Effect.all([
              enqueue(decided.record),
              SubscriptionRef.update(liveCount, (count) => count + 1),
              publishTransition(undefined, decided.record, now, prompt)
            ], { discard: true })
            : publishTransition(undefined, decided.record, now, prompt))
      })

    /**
     * Moves a live request to `to`, giving back its record as it is now; a terminal state takes it out of the live set
     * and into `recent`.
     */
    const moveTo = (id: string, to: RequestState, changes: (now: number) => Partial<RequestRecord> = () => ({})) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.flatMap(
          Ref.modify(state, (current): [readonly [RequestRecord, RequestRecord], RegistryState] => {
            const before = Option.getOrThrow(HashMap.get(current.live, id))
            const after = transition(before, to, changes(now))
            if (!isTerminal(to)) return [[before, after], { ...current, live: HashMap.set(current.live, id, after) }]
            const secondsPerRequest = to === "Completed"
              ? 0.8 * current.secondsPerRequest + 0.2 * ((now - after.enqueuedAt) / 1000)
              : current.secondsPerRequest
            return [[before, after], {
              ...current,
              live: HashMap.remove(current.live, id),
              recent: remember(current.recent, after),
              secondsPerRequest
            }]
          }),
          ([before, after]) =>
            Effect.zipRight(
              isTerminal(to) ? SubscriptionRef.update(liveCount, (count) => count - 1) : Effect.void,
              Effect.as(publishTransition(before.state, after, now), after)
            )
        ))

    /** Changes a live record's fields without a state change; nothing when it is no longer live. */
    const patch = (id: string, changes: (record: RequestRecord) => Partial<RequestRecord>) =>
      Ref.update(state, (current) => ({
        ...current,
        live: HashMap.modify(current.live, id, (record) => ({ ...record, ...changes(record) }))
      }))

    return {
      events,
      admit,
      moveTo,
      patch,
      /** Records who cancelled a live request, unless someone already did. */
      markCancelReason: (id: string, reason: CancelReason) =>
        patch(id, (record) => (record.cancelReason === undefined ? { cancelReason: reason } : {})),
      /** The record of a queued or running request. */
      live: (id: string) => Effect.map(Ref.get(state), (current) => HashMap.get(current.live, id)),
      state: Ref.get(state),
      /** Stops admission for good. */
      drain: Ref.update(state, (current) => ({ ...current, draining: true })),
      /** Completes once no request is queued or running. */
      awaitIdle: liveCount.changes.pipe(Stream.takeUntil((count) => count === 0), Stream.runDrain),
      publish: (event: SchedulerEvent) => PubSub.publish(events, event),
      /** Tells every token observer of `token`, synchronously (the generating fiber calls it every token). */
      tokenGenerated: (token: GeneratedToken): void => {
        for (const observer of tokenObservers) observer(token)
      },
      /** Adds `observer` for as long as the scope lasts. */
      observeTokens: (observer: TokenObserver) =>
        Effect.acquireRelease(
          Effect.sync(() => tokenObservers.add(observer)),
          () => Effect.sync(() => tokenObservers.delete(observer))
        ).pipe(Effect.asVoid)
    } as const
  })

export type RequestRegistry = Effect.Effect.Success<ReturnType<typeof makeRequestRegistry>>
