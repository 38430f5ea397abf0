import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Scope, TestClock } from "effect"
import { RateLimited, RateLimiter } from "../../src/identity/RateLimiter.js"
import { inFlightLeaseMs, sqlRateLimiterLayer } from "../../src/identity/SqlRateLimiter.js"
import { testPrincipal } from "../support/principals.js"
import { storeBackends } from "../support/storeBackends.js"

// The same cases on every limiter: the in-process default, and the shared one on each SQL backend.
const limiters = [
  { name: "in-process", available: true, setup: async () => {}, teardown: async () => {}, layer: () => RateLimiter.Default },
  ...storeBackends().map((backend) => ({
    name: `shared, on ${backend.name}`,
    available: backend.available,
    setup: backend.setup,
    teardown: backend.teardown,
    layer: () => sqlRateLimiterLayer.pipe(Layer.provide(backend.sqlLayer(backend.freshDatabase())))
  }))
]

for (const implementation of limiters) describe.skipIf(!implementation.available)(`RateLimiter, ${implementation.name}`, () => {
  beforeAll(implementation.setup, 90_000)
  afterAll(implementation.teardown)
  /** A limiter made when the test runs (after its backend started). */
  const limiter = () => Layer.unwrapEffect(Effect.sync(implementation.layer))

  it.effect("Retry-After is when the window admits the request again, not earlier", () =>
    Effect.gen(function*() {
      const limiter = yield* RateLimiter
      const who = testPrincipal("k", { rpm: 2 }, {})
      const request = { promptTokens: 1, reservedCompletionTokens: 1 }
      yield* Effect.scoped(limiter.acquire(who, request))
      yield* TestClock.adjust("10 seconds")
      yield* Effect.scoped(limiter.acquire(who, request))
      yield* TestClock.adjust("10.5 seconds")
      const refused = yield* Effect.flip(Effect.scoped(limiter.acquire(who, request)))
      expect(refused).toBeInstanceOf(RateLimited)
      expect(refused).toMatchObject({ scope: "key", kind: "requests", limit: 2, retryAfterSeconds: 40 })
      expect(yield* limiter.headers(who)).toEqual({
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "50s"
      })
      yield* TestClock.adjust("39.499 seconds")
      expect(Exit.isFailure(yield* Effect.exit(Effect.scoped(limiter.acquire(who, request))))).toBe(true)
      yield* TestClock.adjust("1 millis")
      expect(Exit.isSuccess(yield* Effect.exit(Effect.scoped(limiter.acquire(who, request))))).toBe(true)
    }).pipe(Effect.provide(limiter())))

  it.effect("tokens: the reservation shows in the headers and settling refunds the unused part", () =>
    Effect.gen(function*() {
      const limiter = yield* RateLimiter
      const who = testPrincipal("k", {}, { tpm: 1000 })
      yield* Effect.scoped(Effect.gen(function*() {
        const ticket = yield* limiter.acquire(who, { promptTokens: 100, reservedCompletionTokens: 300 })
        expect((yield* limiter.headers(who))["x-ratelimit-remaining-tokens"]).toBe("600")
        yield* ticket.settle(150)
      }))
      expect(yield* limiter.headers(who)).toEqual({
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "850",
        "x-ratelimit-reset-tokens": "1m0s"
      })
      // Larger than the whole limit: waiting cannot help, so it is not a 429.
      const tooLarge = yield* Effect.flip(Effect.scoped(limiter.acquire(who, { promptTokens: 100, reservedCompletionTokens: 1000 })))
      expect(tooLarge._tag).toBe("TokensOverLimit")
      // Without max_tokens, the estimate shrinks to fit the limit.
      yield* TestClock.adjust("1 minute")
      const ticket = yield* Effect.scoped(limiter.acquire(who, { promptTokens: 100, reservedCompletionTokens: 5000, estimated: true }))
      expect(ticket.reserved).toBe(1000)
    }).pipe(Effect.provide(limiter())))

})

const pg = storeBackends().find((backend) => backend.name === "postgres")!

describe.skipIf(!pg.available)("RateLimiter shared by three replicas on one Postgres", () => {
  beforeAll(pg.setup, 90_000)
  afterAll(pg.teardown)
  const request = { promptTokens: 10, reservedCompletionTokens: 10 }

  /** Three limiters, each on its own PgClient pool on one database, as three replicas have them; each in its own scope. */
  const replicas = Effect.gen(function*() {
    const database = pg.freshDatabase()
    return yield* Effect.forEach([0, 1, 2], () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
        const context = yield* Layer.buildWithScope(sqlRateLimiterLayer.pipe(Layer.provide(pg.sqlLayer(database))), scope)
        return { limiter: Context.get(context, RateLimiter), scope }
      }))
  })

  const attempts = (limiters: ReadonlyArray<RateLimiter>, who: ReturnType<typeof testPrincipal>, count: number) =>
    Effect.forEach(
      Array.from({ length: count }, (_, index) => limiters[index % limiters.length]!),
      (limiter) => Effect.exit(Effect.scoped(limiter.acquire(who, request))),
      { concurrency: "unbounded" }
    )

  it.scopedLive("a key's rpm admits the limit in a window, not three times it, whichever replicas the requests reach", () =>
    Effect.gen(function*() {
      const limiters = (yield* replicas).map((one) => one.limiter)
      const exits = yield* attempts(limiters, testPrincipal("k", { rpm: 5 }, {}), 30)
      expect(exits.filter(Exit.isSuccess)).toHaveLength(5)
      for (const exit of exits.filter(Exit.isFailure)) {
        expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : undefined).toBeInstanceOf(RateLimited)
      }
      // Every replica reports the same remaining count.
      for (const limiter of limiters) {
        expect((yield* limiter.headers(testPrincipal("k", { rpm: 5 }, {})))["x-ratelimit-remaining-requests"]).toBe("0")
      }
    }))

  it.scopedLive("a tenant's tokens per minute hold across its keys and the replicas", () =>
    Effect.gen(function*() {
      const limiters = (yield* replicas).map((one) => one.limiter)
      const keys = ["a", "b", "c"].map((key) => testPrincipal(key, {}, { tpm: 200 }))
      const exits = yield* Effect.forEach(keys, (who) => attempts(limiters, who, 6), { concurrency: "unbounded" })
      // 20 tokens each: 10 of the 18 fit the tenant's 200.
      expect(exits.flat().filter(Exit.isSuccess)).toHaveLength(10)
    }))

  it.scoped("concurrency slots are shared; a replica that stops its heartbeat frees its slots when their lease runs out", () =>
    Effect.gen(function*() {
      const [a, b] = yield* replicas
      const who = testPrincipal("k", { maxConcurrent: 1 }, {})
      // A's request never ends: its scope is never closed, as when its replica dies mid-request.
      yield* Scope.extend(a!.limiter.acquire(who, request), yield* Scope.make())
      const tryB = Effect.map(Effect.exit(Effect.scoped(b!.limiter.acquire(who, request))), Exit.isSuccess)
      // Real time for a heartbeat's write, woken by the TestClock, to reach the database.
      const settle = Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 300)))
      expect(yield* tryB).toBe(false)
      yield* TestClock.adjust(inFlightLeaseMs - 5000)
      yield* settle
      yield* TestClock.adjust(10_000)
      // Past the first lease: only A's heartbeat keeps the slot taken.
      expect(yield* tryB).toBe(false)
      yield* settle
      yield* Scope.close(a!.scope, Exit.void)
      yield* TestClock.adjust(inFlightLeaseMs + 1000)
      expect(yield* tryB).toBe(true)
    }))
})
