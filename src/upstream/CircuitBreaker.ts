import { Effect, Metric, Ref } from "effect"
import { WeftMetrics } from "../observability/WeftMetrics.js"

/** When a breaker opens, how long it stays open, and how many probes it lets through when half-open. */
export interface BreakerSettings {
  /** Consecutive failures that open it. */
  readonly failures: number
  /** Failure share within `windowMs`, over at least `minRequests` results, that opens it. */
  readonly failureRate: number
  readonly windowMs: number
  readonly minRequests: number
  readonly cooldownMs: number
  /** Requests let through at once while half-open. */
  readonly halfOpenProbes: number
}

export const defaultBreakerSettings: BreakerSettings = {
  failures: 5,
  failureRate: 0.5,
  windowMs: 30_000,
  minRequests: 20,
  cooldownMs: 10_000,
  halfOpenProbes: 1
}

/** One result in the closed state's window. */
interface Outcome {
  readonly at: number
  readonly failed: boolean
}

/**
 * A breaker's state. Closed: requests pass, results are counted. Open: nothing passes until `until`. HalfOpen: at most
 * `halfOpenProbes` probes at a time; a probe's success closes it, its failure opens it again.
 */
export type BreakerState =
  | { readonly _tag: "Closed"; readonly consecutiveFailures: number; readonly window: ReadonlyArray<Outcome> }
  | { readonly _tag: "Open"; readonly until: number }
  | { readonly _tag: "HalfOpen"; readonly probes: number }

export type BreakerStateName = BreakerState["_tag"]

export const closedBreaker: BreakerState = { _tag: "Closed", consecutiveFailures: 0, window: [] }

/** Whether a request let through is an ordinary one or a half-open probe: only a probe's result decides a half-open breaker. */
export type Admission = "normal" | "probe"

/** The state as of `now`: an open breaker whose cooldown is over is half-open. */
export const breakerAt = (state: BreakerState, now: number): BreakerState =>
  state._tag === "Open" && now >= state.until ? { _tag: "HalfOpen", probes: 0 } : state

/** Whether `admit` would let a request through at `now`, without changing anything. */
export const breakerAdmits = (settings: BreakerSettings, state: BreakerState, now: number): boolean => {
  const current = breakerAt(state, now)
  return current._tag === "Closed" || (current._tag === "HalfOpen" && current.probes < settings.halfOpenProbes)
}

/** Lets a request through (and how), or not, at `now`. */
export const admit = (settings: BreakerSettings, state: BreakerState, now: number): readonly [Admission | undefined, BreakerState] => {
  const current = breakerAt(state, now)
  switch (current._tag) {
    case "Closed":
      return ["normal", current]
    case "Open":
      return [undefined, current]
    case "HalfOpen":
      return current.probes < settings.halfOpenProbes ? ["probe", { _tag: "HalfOpen", probes: current.probes + 1 }] : [undefined, current]
  }
}

const opened = (settings: BreakerSettings, now: number): BreakerState => ({ _tag: "Open", until: now + settings.cooldownMs })

/** Records the result of a request let through as `admission`; `failed: undefined` gives a probe's place back without a verdict. */
export const settle = (
  settings: BreakerSettings,
  state: BreakerState,
  admission: Admission,
  failed: boolean | undefined,
  now: number
): BreakerState => {
  const current = breakerAt(state, now)
  if (current._tag === "HalfOpen") {
    // Results of requests let through before the breaker opened say nothing about the upstream now.
    if (admission !== "probe") return current
    if (failed === undefined) return { _tag: "HalfOpen", probes: Math.max(0, current.probes - 1) }
    return failed ? opened(settings, now) : closedBreaker
  }
  if (current._tag === "Open" || failed === undefined) return current
  const window = [...current.window.filter((outcome) => outcome.at > now - settings.windowMs), { at: now, failed }]
  const consecutiveFailures = failed ? current.consecutiveFailures + 1 : 0
  const failures = window.filter((outcome) => outcome.failed).length
  // Only a failure opens the breaker: a success that merely brings the window up to `minRequests` never does.
  const rateExceeded = failed && window.length >= settings.minRequests && failures / window.length >= settings.failureRate
  return consecutiveFailures >= settings.failures || rateExceeded ? opened(settings, now) : { _tag: "Closed", consecutiveFailures, window }
}

/** A state as metric labels and logs name it. */
export const stateLabel = (state: BreakerStateName): string => (state === "Closed" ? "closed" : state === "HalfOpen" ? "half_open" : "open")

/** The `weft_upstream_breaker_state` value of a state: 0 closed, 1 half-open, 2 open. */
export const breakerGaugeValue = (state: BreakerStateName): number => (state === "Closed" ? 0 : state === "HalfOpen" ? 1 : 2)

/**
 * One deployment's breaker, driven by `Clock`. Its state lives in one `Ref`; every admission and every result is one
 * `Ref.modify` of it, so concurrent requests cannot both take the last half-open probe. Transitions are logged and
 * exported as `weft_upstream_breaker_state{deployment}`.
 */
export const makeCircuitBreaker = (deployment: string, settings: BreakerSettings) =>
  Effect.gen(function*() {
    const state = yield* Ref.make<BreakerState>(closedBreaker)
    const gauge = Metric.tagged(WeftMetrics.upstreamBreakerState, "deployment", deployment)
    yield* Metric.set(gauge, 0)
    const transition = (before: BreakerStateName, after: BreakerStateName) =>
      before === after ? Effect.void : Effect.zipRight(
        Effect.zipRight(
          Metric.set(gauge, breakerGaugeValue(after)),
          Metric.increment(Metric.tagged(Metric.tagged(WeftMetrics.upstreamBreakerTransitions, "deployment", deployment), "to", stateLabel(after)))
        ),
        Effect.logWarning("upstream breaker changed state").pipe(Effect.annotateLogs({ deployment, from: before, to: after }))
      )
    const step = <A>(f: (current: BreakerState, now: number) => readonly [A, BreakerState]) =>
      Effect.flatMap(Effect.clockWith((clock) => clock.currentTimeMillis), (now) =>
        Effect.flatMap(
          Ref.modify(state, (current) => {
            const [result, next] = f(current, now)
            return [[result, current._tag, next._tag] as const, next]
          }),
          ([result, before, after]) => Effect.as(transition(before, after), result)
        ))
    return {
      /** The state now (an open breaker past its cooldown reads as half-open). */
      current: Effect.flatMap(Effect.clockWith((clock) => clock.currentTimeMillis), (now) => Effect.map(Ref.get(state), (value) => breakerAt(value, now))),
      admits: (now: number) => Effect.map(Ref.get(state), (value) => breakerAdmits(settings, value, now)),
      admit: step((current, now) => admit(settings, current, now)),
      settle: (admission: Admission, failed: boolean | undefined) => step((current, now) => [undefined, settle(settings, current, admission, failed, now)] as const)
    } as const
  })

export type CircuitBreaker = Effect.Effect.Success<ReturnType<typeof makeCircuitBreaker>>
