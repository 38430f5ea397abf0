import { Clock, Effect, Option, Ref } from "effect"
import { AuditLog } from "../identity/AuditLog.js"
import type { Principal } from "../identity/Principal.js"
import { RateLimiter } from "../identity/RateLimiter.js"
import type { TokenUsage } from "./RequestUsage.js"

/** What is known about a request once it has been answered. */
export interface AnsweredRequest {
  readonly principal: Option.Option<Principal>
  readonly requestId: string
  readonly method: string
  /** Without the query string. */
  readonly path: string
  readonly status: number
  readonly startedAt: number
  readonly usage: Ref.Ref<TokenUsage | undefined>
}

/**
 * Records the request in the audit log and gives the `x-ratelimit-*` headers of its caller's limits (none without a
 * principal, as when authentication is off).
 */
export const accountRequest = (answered: AnsweredRequest): Effect.Effect<Record<string, string>, never, AuditLog | RateLimiter> =>
  Effect.gen(function*() {
    const usage = yield* Ref.get(answered.usage)
    const span = yield* Effect.option(Effect.currentSpan)
    const principal = Option.getOrUndefined(answered.principal)
    const durationMs = (yield* Clock.currentTimeMillis) - answered.startedAt
    yield* Effect.flatMap(AuditLog, (log) =>
      log.record({
        kind: "request",
        requestId: answered.requestId,
        traceId: Option.getOrUndefined(Option.map(span, (one) => one.traceId)),
        keyId: principal?.keyId,
        tenant: principal?.tenant,
        method: answered.method,
        path: answered.path,
        status: answered.status,
        durationMs,
        promptTokens: usage?.promptTokens,
        completionTokens: usage?.completionTokens
      }))
    return principal === undefined ? {} : yield* Effect.flatMap(RateLimiter, (limiter) => limiter.headers(principal))
  })
