import { Clock, Effect, Ref, Schema, SynchronizedRef } from "effect"
import type { Principal, UsageLimits } from "./Principal.js"

/** The length of every rate-limit window: limits are per minute. */
export const windowMs = 60_000

/** Which limit a request ran into. */
export const LimitScope = Schema.Literal("key", "tenant")
export const LimitKind = Schema.Literal("requests", "tokens", "concurrency")

/** A key's or tenant's limit is used up for now; `retryAfterSeconds` is when the window admits this request again. */
export class RateLimited extends Schema.TaggedError<RateLimited>()("RateLimited", {
  scope: LimitScope,
  kind: LimitKind,
  /** The limit's value: requests or tokens per minute, or requests at once. */
  limit: Schema.Number,
  retryAfterSeconds: Schema.Number
}) {
  override get message(): string {
    const what = this.kind === "concurrency" ? `${this.limit} concurrent requests` : `${this.limit} ${this.kind} per minute`
    return `Rate limit reached for this ${this.scope === "key" ? "API key" : "tenant"}: ${what}. Please try again in ${this.retryAfterSeconds}s.`
  }
}

/** A request needs more tokens than a tokens-per-minute limit allows in a whole minute: waiting cannot help. */
export class TokensOverLimit extends Schema.TaggedError<TokensOverLimit>()("TokensOverLimit", {
  scope: LimitScope,
  limit: Schema.Number,
  requested: Schema.Number
}) {
  override get message(): string {
    return `This request needs ${this.requested} tokens (prompt + max_tokens), more than the ` +
      `${this.scope === "key" ? "API key's" : "tenant's"} limit of ${this.limit} tokens per minute. Lower max_tokens or shorten the prompt.`
  }
}

/** What a request reserves at admission. */
export interface TokenReservation {
  readonly promptTokens: number
  /** `max_tokens`, or the estimate when the request gave none. */
  readonly reservedCompletionTokens: number
  /** The completion reservation is an estimate (no `max_tokens`): shrink it to fit the smallest token limit. */
  readonly estimated?: boolean | undefined
}

/** An admitted request: holds a concurrency slot until its scope closes. */
export interface RateLimitTicket {
  /** Tokens reserved at admission (prompt + completion). */
  readonly reserved: number
  /** Charges the real count instead of the reservation (a refund or an extra charge); only the first call counts. */
  readonly settle: (actualTokens: number) => Effect.Effect<void>
}

/** One admission in a window: its time and its current charge (the reservation until settled). */
export interface Admission {
  readonly id: string
  readonly at: number
  readonly tokens: number
}

/** The usage of one key or one tenant. */
export interface Bucket {
  /** Admissions of the last `windowMs`, oldest first. */
  readonly admissions: ReadonlyArray<Admission>
  readonly inFlight: number
  /** Every token charged so far, settled charges included: for accounting checks. */
  readonly charged: number
}

export const emptyBucket: Bucket = { admissions: [], inFlight: 0, charged: 0 }

/** A key or tenant whose limits a request counts against, and the name of its usage bucket. */
export interface Limited {
  readonly scope: typeof LimitScope.Type
  readonly bucketKey: string
  readonly limits: UsageLimits
}

/** A limited key or tenant with its usage now. */
export interface LimitedBucket extends Limited {
  readonly bucket: Bucket
}

/** The key and the tenant a principal's request counts against. */
export const limitedOf = (principal: Principal): ReadonlyArray<Limited> => [
  { scope: "key", bucketKey: `key:${principal.keyId}`, limits: principal.keyLimits },
  { scope: "tenant", bucketKey: `tenant:${principal.tenant}`, limits: principal.tenantLimits }
]

/** The bucket without the admissions that left the window. */
export const live = (bucket: Bucket, now: number): Bucket => {
  const first = bucket.admissions.findIndex((admission) => admission.at > now - windowMs)
  return first === 0 ? bucket : { ...bucket, admissions: first === -1 ? [] : bucket.admissions.slice(first) }
}

const tokensOf = (bucket: Bucket) => bucket.admissions.reduce((sum, admission) => sum + admission.tokens, 0)

/** Milliseconds until admissions expire enough that `fits(freed count, freed tokens)` holds. */
const waitUntil = (bucket: Bucket, now: number, fits: (count: number, tokens: number) => boolean): number => {
  let freedTokens = 0
  for (let index = 0; index < bucket.admissions.length; index++) {
    const admission = bucket.admissions[index]!
    freedTokens += admission.tokens
    if (fits(index + 1, freedTokens)) return admission.at + windowMs - now
  }
  return windowMs
}

const seconds = (ms: number) => Math.max(1, Math.ceil(ms / 1000))

/** How long until the window is back to its full limit: when its newest charged admission expires. */
const resetMs = (admissions: ReadonlyArray<Admission>, now: number) => {
  const last = admissions.at(-1)
  return last === undefined ? 0 : Math.max(0, last.at + windowMs - now)
}

/** A reset as OpenAI writes it: `250ms`, `1s`, `6m0s` (whole seconds, rounded up, from one second on). */
export const formatReset = (ms: number): string => {
  if (ms <= 0) return "0s"
  if (ms < 1000) return `${Math.ceil(ms)}ms`
  const total = Math.ceil(ms / 1000)
  const minutes = Math.floor(total / 60)
  return minutes > 0 ? `${minutes}m${total % 60}s` : `${total}s`
}

type State = ReadonlyMap<string, Bucket>

/** Whether a request is admitted now, and with how many tokens reserved. */
export type Decision =
  | { readonly _tag: "Admitted"; readonly reserved: number }
  | { readonly _tag: "Refused"; readonly error: RateLimited | TokensOverLimit }

/** The admission decision for a request against its key's and tenant's live buckets: the one rule every limiter applies. */
export const decideAdmission = (buckets: ReadonlyArray<LimitedBucket>, reservation: TokenReservation, now: number): Decision => {
  let completion = reservation.reservedCompletionTokens
  for (const { scope, limits } of buckets) {
    if (limits.tpm === undefined) continue
    if (reservation.estimated === true) completion = Math.max(0, Math.min(completion, limits.tpm - reservation.promptTokens))
    const requested = reservation.promptTokens + completion
    if (requested > limits.tpm) return { _tag: "Refused", error: new TokensOverLimit({ scope, limit: limits.tpm, requested }) }
  }
  const reserved = reservation.promptTokens + completion
  const refusals: Array<{ readonly scope: typeof LimitScope.Type; readonly kind: typeof LimitKind.Type; readonly limit: number; readonly waitMs: number }> = []
  for (const { scope, limits, bucket } of buckets) {
    if (limits.maxConcurrent !== undefined && bucket.inFlight >= limits.maxConcurrent) {
      // Nothing says when a running request ends; a second is a polite first retry.
      refusals.push({ scope, kind: "concurrency", limit: limits.maxConcurrent, waitMs: 1000 })
    }
    const count = bucket.admissions.length
    if (limits.rpm !== undefined && count >= limits.rpm) {
      const rpm = limits.rpm
      refusals.push({ scope, kind: "requests", limit: rpm, waitMs: waitUntil(bucket, now, (freed) => count - freed < rpm) })
    }
    const used = tokensOf(bucket)
    if (limits.tpm !== undefined && used + reserved > limits.tpm) {
      const tpm = limits.tpm
      refusals.push({ scope, kind: "tokens", limit: tpm, waitMs: waitUntil(bucket, now, (_, freed) => used - freed + reserved <= tpm) })
    }
  }
  if (refusals.length > 0) {
    const first = refusals[0]!
    const waitMs = Math.max(...refusals.map((refusal) => refusal.waitMs))
    return { _tag: "Refused", error: new RateLimited({ scope: first.scope, kind: first.kind, limit: first.limit, retryAfterSeconds: seconds(waitMs) }) }
  }
  return { _tag: "Admitted", reserved }
}

/** Only what some limit counts is logged: an unlimited key grows no log. */
export const isLogged = (limits: UsageLimits): boolean => limits.rpm !== undefined || limits.tpm !== undefined

/** OpenAI's `x-ratelimit-*` headers for the tightest request and token limits of these live buckets. */
export const rateLimitHeaders = (buckets: ReadonlyArray<LimitedBucket>, now: number): Record<string, string> => {
  const result: Record<string, string> = {}
  const tightest = (limitOf: (limits: UsageLimits) => number | undefined, usedOf: (bucket: Bucket) => number) =>
    buckets.flatMap(({ limits, bucket }) => {
      const limit = limitOf(limits)
      return limit === undefined ? [] : [{ limit, remaining: Math.max(0, limit - usedOf(bucket)), bucket }]
    }).sort((a, b) => a.remaining - b.remaining)[0]
  const requests = tightest((limits) => limits.rpm, (bucket) => bucket.admissions.length)
  if (requests !== undefined) {
    result["x-ratelimit-limit-requests"] = String(requests.limit)
    result["x-ratelimit-remaining-requests"] = String(requests.remaining)
    result["x-ratelimit-reset-requests"] = formatReset(resetMs(requests.bucket.admissions, now))
  }
  const tokens = tightest((limits) => limits.tpm, tokensOf)
  if (tokens !== undefined) {
    result["x-ratelimit-limit-tokens"] = String(tokens.limit)
    result["x-ratelimit-remaining-tokens"] = String(tokens.remaining)
    result["x-ratelimit-reset-tokens"] = formatReset(resetMs(tokens.bucket.admissions.filter((admission) => admission.tokens > 0), now))
  }
  return result
}

/**
 * Per-key and per-tenant limits on requests per minute, tokens per minute and concurrent requests.
 *
 * Windows are sliding logs: a request is admitted at time `t` only if the admissions (and their token charges) in
 * `(t - 60 s, t]` leave room for it, so no 60-second window ever holds more admissions than its limit. Tokens are
 * reserved at admission and settled with the real count. Invariant: all usage lives in one `SynchronizedRef`, and every
 * check-and-reserve (key and tenant together) and every settle is one update of it, so no interleaving of fibers can
 * admit past a limit.
 */
export class RateLimiter extends Effect.Service<RateLimiter>()("weft/RateLimiter", {
  effect: Effect.gen(function*() {
    const state = yield* SynchronizedRef.make<State>(new Map())
    const nextId = yield* Ref.make(0)

    const update = <A>(f: (state: State, now: number) => readonly [A, State]) =>
      SynchronizedRef.modifyEffect(state, (current) => Effect.map(Clock.currentTimeMillis, (now) => f(current, now)))

    const decide = (principal: Principal, reservation: TokenReservation, id: string) =>
      update<Decision>((current, now) => {
        const buckets = limitedOf(principal).map((limited) => ({ ...limited, bucket: live(current.get(limited.bucketKey) ?? emptyBucket, now) }))
        const decision = decideAdmission(buckets, reservation, now)
        if (decision._tag === "Refused") return [decision, current]
        const next = new Map(current)
        for (const { bucketKey, limits, bucket } of buckets) {
          next.set(bucketKey, {
            admissions: isLogged(limits) ? [...bucket.admissions, { id, at: now, tokens: decision.reserved }] : bucket.admissions,
            inFlight: bucket.inFlight + 1,
            charged: bucket.charged + decision.reserved
          })
        }
        return [decision, next]
      })

    const settleIn = (principal: Principal, id: string, reserved: number, actual: number) =>
      update((current, now) => {
        const next = new Map(current)
        for (const { bucketKey } of limitedOf(principal)) {
          const bucket = live(current.get(bucketKey) ?? emptyBucket, now)
          next.set(bucketKey, {
            ...bucket,
            admissions: bucket.admissions.map((admission) => (admission.id === id ? { ...admission, tokens: actual } : admission)),
            charged: bucket.charged + actual - reserved
          })
        }
        return [undefined, next]
      })

    const release = (principal: Principal) =>
      update((current, now) => {
        const next = new Map(current)
        for (const { bucketKey } of limitedOf(principal)) {
          const bucket = live(current.get(bucketKey) ?? emptyBucket, now)
          next.set(bucketKey, { ...bucket, inFlight: bucket.inFlight - 1 })
        }
        return [undefined, next]
      })

    /** Admits a request under the principal's key and tenant limits; the concurrency slot is held until the scope closes. */
    const acquire = Effect.fn("RateLimiter.acquire")(function*(principal: Principal, reservation: TokenReservation) {
      const id = String(yield* Ref.getAndUpdate(nextId, (n) => n + 1))
      const decision = yield* Effect.acquireRelease(decide(principal, reservation, id), (admitted) =>
        admitted._tag === "Admitted" ? release(principal) : Effect.void)
      if (decision._tag === "Refused") return yield* Effect.fail(decision.error)
      const settled = yield* Ref.make(false)
      const settle = (actualTokens: number) =>
        Effect.flatMap(Ref.getAndSet(settled, true), (already) =>
          already ? Effect.void : settleIn(principal, id, decision.reserved, actualTokens))
      return { reserved: decision.reserved, settle } satisfies RateLimitTicket
    })

    /** OpenAI's `x-ratelimit-*` headers for the principal's tightest request and token limits; none for an unlimited one. */
    const headers = (principal: Principal): Effect.Effect<Record<string, string>> =>
      update((current, now) => {
        const buckets = limitedOf(principal).map((limited) => ({ ...limited, bucket: live(current.get(limited.bucketKey) ?? emptyBucket, now) }))
        return [rateLimitHeaders(buckets, now), current]
      })

    /** Requests in flight and tokens charged so far (settled charges included) of a key (`key:ID`) or tenant (`tenant:T`). */
    const usage = (bucketKey: string) =>
      Effect.map(SynchronizedRef.get(state), (current) => {
        const bucket = current.get(bucketKey) ?? emptyBucket
        return { inFlight: bucket.inFlight, charged: bucket.charged }
      })

    return { acquire, headers, usage } as const
  })
}) {}
