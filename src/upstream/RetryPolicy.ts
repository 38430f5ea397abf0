import { Duration, Schedule } from "effect"

/** Why a failed attempt is retried; the `reason` label of `weft_upstream_retries_total`. */
export type RetryReason = "connect" | "reset" | "timeout" | "rate_limited" | "server_error" | "unavailable"

/** What went wrong in one attempt, as far as deciding on a retry goes. */
export type AttemptFault =
  | { readonly _tag: "Connect" }
  | { readonly _tag: "Reset" }
  | { readonly _tag: "Timeout" }
  | { readonly _tag: "Status"; readonly status: number }
  /** A local deployment that is loading, draining or whose queue is full. */
  | { readonly _tag: "LocalUnavailable"; readonly saturated: boolean }

/**
 * Whether a failed attempt may be retried (on the same or another deployment), and whether it counts against the
 * deployment's breaker. Connection failures, timeouts, 429 and 5xx (but 501 and 505, which will not change) are
 * retried; every other status is the request's own fault and never is. A 429 or a full queue backs the deployment off
 * without counting as a breaker failure: it is busy, not broken.
 */
export type RetryVerdict =
  | { readonly _tag: "Retry"; readonly reason: RetryReason; readonly breakerFailure: boolean }
  | { readonly _tag: "Final" }

export const classifyFault = (fault: AttemptFault): RetryVerdict => {
  switch (fault._tag) {
    case "Connect":
      return { _tag: "Retry", reason: "connect", breakerFailure: true }
    case "Reset":
      return { _tag: "Retry", reason: "reset", breakerFailure: true }
    case "Timeout":
      return { _tag: "Retry", reason: "timeout", breakerFailure: true }
    case "LocalUnavailable":
      return { _tag: "Retry", reason: fault.saturated ? "rate_limited" : "unavailable", breakerFailure: false }
    case "Status":
      if (fault.status === 429) return { _tag: "Retry", reason: "rate_limited", breakerFailure: false }
      if (fault.status >= 500 && fault.status <= 599 && fault.status !== 501 && fault.status !== 505) {
        return { _tag: "Retry", reason: "server_error", breakerFailure: true }
      }
      return { _tag: "Final" }
  }
}

/** A model's retry policy: attempts after the first, and the capped exponential backoff between them. */
export interface RetrySettings {
  readonly retries: number
  readonly baseDelayMs: number
  readonly maxDelayMs: number
}

export const defaultRetrySettings: RetrySettings = { retries: 3, baseDelayMs: 100, maxDelayMs: 2_000 }

/**
 * The delays between attempts: exponential from `baseDelayMs`, jittered (×0.8–1.2), capped at `maxDelayMs`, at most
 * `retries` times. `waitOf` lengthens a delay to what the failure asks for (a `Retry-After`), still within the cap.
 */
export const retrySchedule = <E>(settings: RetrySettings, waitOf: (failure: E) => number) =>
  Schedule.exponential(Duration.millis(Math.max(1, settings.baseDelayMs))).pipe(
    Schedule.jittered,
    Schedule.intersect(Schedule.recurs(settings.retries)),
    Schedule.intersect(Schedule.identity<E>()),
    Schedule.modifyDelay(([, failure], delay) =>
      Duration.millis(Math.min(settings.maxDelayMs, Math.max(Duration.toMillis(delay), waitOf(failure)))))
  )

/** A `Retry-After` header (seconds or an HTTP date) in milliseconds from `now`; undefined when absent or unreadable. */
export const retryAfterMs = (header: string | undefined, now: number): number | undefined => {
  if (header === undefined) return undefined
  const trimmed = header.trim()
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000
  const date = Date.parse(trimmed)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}
