import { Clock, Effect, Option, Ref } from "effect"
import type { Scope } from "effect"
import { AuditLog } from "../identity/AuditLog.js"
import type { Principal } from "../identity/Principal.js"
import { RateLimiter } from "../identity/RateLimiter.js"
import type { TokenUsage } from "./RequestUsage.js"

/** What is known about a request when it arrives. */
export interface ArrivedRequest {
  /** Read when the request is answered and when it is recorded: the caller is known only once its key is checked. */
  readonly principal: () => Option.Option<Principal>
  readonly requestId: string
  readonly method: string
  /** Without the query string. */
  readonly path: string
  readonly startedAt: number
  /** Filled in by a generation route. */
  readonly usage: Ref.Ref<TokenUsage | undefined>
}

/**
 * Audits a request: its record is written when the request's scope closes, once the whole response (a stream
 * included) is out, so it carries the tokens the generation really used and the full duration; a request that never
 * got an answer (the client went away) is recorded as 499. `answered` notes the status and gives the caller's
 * `x-ratelimit-*` headers (none without a principal, as when authentication is off).
 */
export const accountRequest = (arrived: ArrivedRequest): Effect.Effect<
  { readonly answered: (status: number) => Effect.Effect<Record<string, string>> },
  never,
  AuditLog | RateLimiter | Scope.Scope
> =>
  Effect.gen(function*() {
    const log = yield* AuditLog
    const limiter = yield* RateLimiter
    const status = yield* Ref.make(499)
    const traceId = Option.getOrUndefined(Option.map(yield* Effect.option(Effect.currentSpan), (span) => span.traceId))
    const principal = () => Option.getOrUndefined(arrived.principal())
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        const usage = yield* Ref.get(arrived.usage)
        yield* log.record({
          kind: "request",
          requestId: arrived.requestId,
          traceId,
          keyId: principal()?.keyId,
          tenant: principal()?.tenant,
          method: arrived.method,
          path: arrived.path,
          status: yield* Ref.get(status),
          durationMs: (yield* Clock.currentTimeMillis) - arrived.startedAt,
          promptTokens: usage?.promptTokens,
          completionTokens: usage?.completionTokens
        })
      })
    )
    const answered = (code: number) =>
      Effect.suspend(() => {
        const caller = principal()
        return Effect.zipRight(Ref.set(status, code), caller === undefined ? Effect.succeed({}) : limiter.headers(caller))
      })
    return { answered } as const
  })
