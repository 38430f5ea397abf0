import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Clock, Duration, Effect, Layer, Ref, Schedule, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { isPostgresUrl, postgresClientLayer, type PostgresClientOptions } from "../storage/postgresClient.js"
import { createSchema } from "../storage/createSchema.js"
import { lockForTransaction } from "../storage/pgAdvisoryLocks.js"
import { SqlInteger } from "../storage/SqlInteger.js"
import type { Principal, UsageLimits } from "./Principal.js"
import {
  type Bucket,
  decideAdmission,
  type Limited,
  type LimitedBucket,
  limitedOf,
  RateLimiter,
  type RateLimitTicket,
  rateLimitHeaders,
  type TokenReservation,
  windowMs
} from "./RateLimiter.js"

/**
 * How long a replica's requests in flight count without its heartbeat: a replica that dies holding concurrency slots
 * frees them after this. Its admissions keep counting against rpm and tpm for their minute, as they happened.
 */
export const inFlightLeaseMs = 30_000

const AdmissionRow = Schema.Struct({
  bucket_key: Schema.String,
  id: Schema.String,
  at: SqlInteger,
  tokens: SqlInteger,
  in_flight: SqlInteger,
  held_until: SqlInteger
})

const decodeRows = Schema.decodeUnknown(Schema.Array(AdmissionRow))

const hasLimits = (limits: UsageLimits) => limits.rpm !== undefined || limits.tpm !== undefined || limits.maxConcurrent !== undefined

/** A bucket's usage now from its rows: admissions in the window, and requests in flight on a live lease. */
const bucketOf = (rows: ReadonlyArray<typeof AdmissionRow.Type>, bucketKey: string, now: number): Bucket => {
  const mine = rows.filter((row) => row.bucket_key === bucketKey)
  return {
    admissions: mine.filter((row) => row.at > now - windowMs).map((row) => ({ id: row.id, at: row.at, tokens: row.tokens })),
    inFlight: mine.filter((row) => row.in_flight === 1 && row.held_until > now).length,
    charged: mine.reduce((sum, row) => sum + row.tokens, 0)
  }
}

/**
 * The rate limiter on SQL, for replicas that share one database (Postgres): a key's or tenant's requests, tokens and
 * concurrency count the same whichever replica they reach. It applies the in-process limiter's rule
 * (`decideAdmission`) to usage read from the `rate_limit_admissions` table, one row per admission and bucket.
 *
 * Invariant: a check-and-reserve is one transaction that first takes the buckets' locks (Postgres advisory transaction
 * locks, in name order so two requests never wait on each other; on SQLite the single connection serialises
 * transactions), then reads the window, decides and inserts; so no interleaving of replicas admits past a limit.
 */
export const makeSqlRateLimiter = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* createSchema(sql, [
    sql`CREATE TABLE IF NOT EXISTS rate_limit_admissions (
      bucket_key TEXT NOT NULL,
      id TEXT NOT NULL,
      replica TEXT NOT NULL,
      at BIGINT NOT NULL,
      tokens BIGINT NOT NULL,
      in_flight INTEGER NOT NULL,
      held_until BIGINT NOT NULL,
      PRIMARY KEY (bucket_key, id)
    )`,
    sql`CREATE INDEX IF NOT EXISTS rate_limit_admissions_replica ON rate_limit_admissions (replica, in_flight)`,
    sql`CREATE INDEX IF NOT EXISTS rate_limit_admissions_at ON rate_limit_admissions (at)`
  ])

  /** This limiter's name in the table: its heartbeat renews the leases of its own requests in flight. */
  const replica = randomBytes(8).toString("hex")
  const nextId = yield* Ref.make(0)

  const lockBuckets = (keys: ReadonlyArray<string>) =>
    sql.onDialectOrElse({
      pg: () => Effect.forEach([...keys].sort(), (key) => lockForTransaction(sql, key), { discard: true }),
      orElse: () => Effect.void
    })

  /** Rows that still count: admitted within the window, or in flight on a live lease. */
  const readBuckets = (limited: ReadonlyArray<Limited>, now: number) =>
    Effect.map(
      Effect.flatMap(
        sql`SELECT bucket_key, id, at, tokens, in_flight, held_until FROM rate_limit_admissions WHERE ${
          sql.in("bucket_key", limited.map((one) => one.bucketKey))
        } AND (at > ${now - windowMs} OR (in_flight = 1 AND held_until > ${now})) ORDER BY at, id`,
        decodeRows
      ),
      (rows): ReadonlyArray<LimitedBucket> => limited.map((one) => ({ ...one, bucket: bucketOf(rows, one.bucketKey, now) }))
    )

  const deleteExpired = (now: number) => sql`at <= ${now - windowMs} AND (in_flight = 0 OR held_until <= ${now})`

  const decide = (limited: ReadonlyArray<Limited>, reservation: TokenReservation, id: string) =>
    sql.withTransaction(Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const keys = limited.map((one) => one.bucketKey)
      yield* lockBuckets(keys)
      yield* sql`DELETE FROM rate_limit_admissions WHERE ${sql.in("bucket_key", keys)} AND ${deleteExpired(now)}`
      const decision = decideAdmission(yield* readBuckets(limited, now), reservation, now)
      if (decision._tag === "Admitted") {
        yield* sql`INSERT INTO rate_limit_admissions ${
          sql.insert(keys.map((bucketKey) => ({
            bucket_key: bucketKey,
            id,
            replica,
            at: now,
            tokens: decision.reserved,
            in_flight: 1,
            held_until: now + inFlightLeaseMs
          })))
        }`
      }
      return decision
    })).pipe(
      // A limiter whose database fails cannot say whether a request fits: a server failure (a 500), like a key store
      // that cannot authenticate, not a refusal the client could retry into.
      Effect.orDie
    )

  // Settling and releasing run in finalizers and after the reply: a failure is logged, and a lost release frees itself
  // when the lease runs out.
  const logged = (what: string) => (effect: Effect.Effect<unknown, SqlError>) =>
    effect.pipe(Effect.asVoid, Effect.catchAll((error) => Effect.logWarning(`The shared rate limiter could not ${what}`, error)))

  const release = (id: string) => sql`UPDATE rate_limit_admissions SET in_flight = 0 WHERE id = ${id}`.pipe(logged("release a request"))

  const settleIn = (id: string, actual: number) =>
    sql`UPDATE rate_limit_admissions SET tokens = ${actual} WHERE id = ${id}`.pipe(logged("settle a request's tokens"))

  /** Admits a request under the principal's key and tenant limits, on every replica's count. */
  const acquire = Effect.fn("RateLimiter.acquire")(function*(principal: Principal, reservation: TokenReservation) {
    const limited = limitedOf(principal).filter((one) => hasLimits(one.limits))
    // An unlimited key of an unlimited tenant touches no table.
    if (limited.length === 0) return { reserved: reservation.promptTokens + reservation.reservedCompletionTokens, settle: () => Effect.void } satisfies RateLimitTicket
    const id = `${replica}-${yield* Ref.getAndUpdate(nextId, (n) => n + 1)}`
    const decision = yield* Effect.acquireRelease(decide(limited, reservation, id), (admitted) =>
      admitted._tag === "Admitted" ? release(id) : Effect.void)
    if (decision._tag === "Refused") return yield* Effect.fail(decision.error)
    const settled = yield* Ref.make(false)
    const settle = (actualTokens: number) =>
      Effect.flatMap(Ref.getAndSet(settled, true), (already) => (already ? Effect.void : settleIn(id, actualTokens)))
    return { reserved: decision.reserved, settle } satisfies RateLimitTicket
  })

  /** OpenAI's `x-ratelimit-*` headers, from every replica's usage. */
  const headers = (principal: Principal): Effect.Effect<Record<string, string>> =>
    Effect.gen(function*() {
      const limited = limitedOf(principal).filter((one) => hasLimits(one.limits))
      if (limited.length === 0) return {}
      const now = yield* Clock.currentTimeMillis
      return rateLimitHeaders(yield* readBuckets(limited, now), now)
    }).pipe(Effect.orDie)

  /** Requests in flight and the tokens charged by the admissions still kept (the last minute's) of a key or tenant bucket. */
  const usage = (bucketKey: string) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const rows = yield* Effect.flatMap(sql`SELECT bucket_key, id, at, tokens, in_flight, held_until FROM rate_limit_admissions WHERE bucket_key = ${bucketKey}`, decodeRows)
      const bucket = bucketOf(rows, bucketKey, now)
      return { inFlight: bucket.inFlight, charged: bucket.charged }
    }).pipe(Effect.orDie)

  const every = (ms: number, effect: Effect.Effect<unknown, SqlError>, what: string) =>
    effect.pipe(logged(what), Effect.repeat(Schedule.spaced(Duration.millis(ms))), Effect.forkScoped)

  yield* every(
    inFlightLeaseMs / 3,
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      sql`UPDATE rate_limit_admissions SET held_until = ${now + inFlightLeaseMs} WHERE replica = ${replica} AND in_flight = 1`),
    "renew its requests' leases"
  )
  yield* every(windowMs, Effect.flatMap(Clock.currentTimeMillis, (now) => sql`DELETE FROM rate_limit_admissions WHERE ${deleteExpired(now)}`), "sweep old admissions")

  return RateLimiter.make({ acquire, headers, usage })
})

/** The shared rate limiter on the SqlClient in context. */
export const sqlRateLimiterLayer: Layer.Layer<RateLimiter, never, SqlClient.SqlClient> = Layer.scoped(RateLimiter, makeSqlRateLimiter)

/** The shared rate limiter on Postgres at `url`. */
export const pgRateLimiterLayer = (url: string, options?: PostgresClientOptions) =>
  sqlRateLimiterLayer.pipe(Layer.provide(postgresClientLayer(url, options)))

/**
 * The rate limiter that goes with the keys at `keysLocation`: shared through Postgres when the keys are (a cluster),
 * the in-process one otherwise.
 */
export const rateLimiterLayer = (keysLocation: string): Layer.Layer<RateLimiter, SqlError> =>
  isPostgresUrl(keysLocation) ? pgRateLimiterLayer(keysLocation) : RateLimiter.Default
