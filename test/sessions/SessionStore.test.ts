import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Context, Deferred, Effect, Fiber, Layer, Option, TestClock } from "effect"
import { SessionConfig, type SessionSettings, SessionOwnedByAnother, SessionOwner, SessionStore, SessionStoreFailed, StoredResponse } from "../../src/sessions/SessionStore.js"
import { storeBackends } from "../support/storeBackends.js"

const keyA = SessionOwner.make("key-a")
const keyB = SessionOwner.make("key-b")
const k = SessionOwner.make("k")

const turn = (user: string, reply: string) => ({
  newMessages: [{ role: "user", content: user }] as const,
  reply: { role: "assistant", content: reply } as const,
  usage: { promptTokens: 10, completionTokens: 4, cachedTokens: 6 }
})

for (const backend of storeBackends()) describe.skipIf(!backend.available)(`SessionStore on ${backend.name}`, () => {
  beforeAll(backend.setup, 90_000)
  afterAll(backend.teardown)
  const storeOn = (database: string, settings: Partial<SessionSettings> = {}) =>
    SessionStore.Default.pipe(
      Layer.provide(backend.sqlLayer(database)),
      Layer.provide(SessionConfig.layer({ ...settings, databasePath: database }))
    )
  /** A store on a fresh database (made when the test runs, after the backend started). */
  const store = (settings: Partial<SessionSettings> = {}) =>
    Layer.unwrapEffect(Effect.sync(() => storeOn(backend.freshDatabase(), settings)))

  it.effect("appends turns and reads the conversation back", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      yield* store.appendTurn("s1", keyA, turn("hello", "hi there"))
      yield* store.appendTurn("s1", keyA, turn("and then?", "then this"))
      const session = Option.getOrThrow(yield* store.get("s1", keyA))
      expect(session.messages.map((message) => message.content)).toEqual(["hello", "hi there", "and then?", "then this"])
      expect(session).toMatchObject({ turns: 2, owner: keyA, promptTokens: 20, completionTokens: 8, cachedTokens: 12 })
      expect(yield* store.remove("s1", keyA)).toBe(true)
      expect(yield* store.remove("s1", keyA)).toBe(false)
      expect(Option.isNone(yield* store.get("s1", keyA))).toBe(true)
    }).pipe(Effect.provide(store())))

  it.live("sessions survive a restart (a new store on the same database)", () =>
    Effect.gen(function*() {
      const database = backend.freshDatabase()
      yield* Effect.scoped(
        Effect.flatMap(SessionStore, (store) => store.appendTurn("persist", k, turn("remember me", "ok"))).pipe(
          Effect.provide(storeOn(database))
        )
      )
      const session = yield* Effect.flatMap(SessionStore, (store) => store.get("persist", k)).pipe(
        Effect.provide(storeOn(database))
      )
      expect(Option.getOrThrow(session).messages[0]!.content).toBe("remember me")
    }))

  it.effect("idle sessions expire after the TTL and are swept", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      yield* store.appendTurn("old", k, turn("a", "b"))
      yield* TestClock.adjust(500)
      yield* store.appendTurn("fresh", k, turn("c", "d"))
      yield* TestClock.adjust(600)
      expect(Option.isNone(yield* store.get("old", k))).toBe(true)
      expect(Option.isSome(yield* store.get("fresh", k))).toBe(true)
      expect(yield* store.sweepExpired).toBe(1)
    }).pipe(Effect.provide(store({ ttlMs: 1000, sweepIntervalMs: 1_000_000 }))))

  it.effect("a session is its owner's: others neither read, delete, continue nor overwrite it", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      yield* store.appendTurn("mine", keyA, turn("secret", "noted"))
      expect(Option.isNone(yield* store.get("mine", keyB))).toBe(true)
      expect(Option.isNone(yield* store.get("mine", SessionOwner.make("")))).toBe(true)
      expect(yield* store.remove("mine", keyB)).toBe(false)
      expect(Option.isSome(yield* store.resume("mine", keyA))).toBe(true)
      expect(Option.isNone(yield* store.resume("free", keyB))).toBe(true)
      const foreign = yield* Effect.flip(store.resume("mine", keyB))
      expect(foreign).toBeInstanceOf(SessionOwnedByAnother)
      // Even a caller that skipped `resume` cannot write over it.
      expect(yield* Effect.flip(store.appendTurn("mine", keyB, turn("overwrite", "x")))).toBeInstanceOf(SessionStoreFailed)
      const session = Option.getOrThrow(yield* store.get("mine", keyA))
      expect(session.messages.map((message) => message.content)).toEqual(["secret", "noted"])
    }).pipe(Effect.provide(store())))

  it.effect("an expired session's id is free again, for any owner", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      yield* store.appendTurn("reused", keyA, turn("old", "reply"))
      yield* TestClock.adjust(1500)
      expect(Option.isNone(yield* store.resume("reused", keyB))).toBe(true)
      yield* store.appendTurn("reused", keyB, turn("new", "reply"))
      expect(Option.getOrThrow(yield* store.get("reused", keyB)).messages[0]!.content).toBe("new")
      expect(Option.isNone(yield* store.get("reused", keyA))).toBe(true)
    }).pipe(Effect.provide(store({ ttlMs: 1000, sweepIntervalMs: 1_000_000 }))))

  it.effect("turns of one session are serialised; turns of different sessions run in parallel", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      const firstHolding = yield* Deferred.make<void>()
      const releaseFirst = yield* Deferred.make<void>()
      const order: Array<string> = []
      const first = yield* Effect.fork(
        store.withTurnLock("s", Effect.gen(function*() {
          order.push("first start")
          yield* Deferred.succeed(firstHolding, undefined)
          yield* Deferred.await(releaseFirst)
          order.push("first end")
        }))
      )
      yield* Deferred.await(firstHolding)
      const second = yield* Effect.fork(store.withTurnLock("s", Effect.sync(() => order.push("second"))))
      const other = yield* Effect.fork(store.withTurnLock("other", Effect.sync(() => order.push("other session"))))
      yield* Fiber.join(other)
      expect(order).toEqual(["first start", "other session"])
      yield* Deferred.succeed(releaseFirst, undefined)
      yield* Fiber.join(first)
      yield* Fiber.join(second)
      expect(order).toEqual(["first start", "other session", "first end", "second"])
    }).pipe(Effect.provide(store())))
  it.effect("a tenant's owner (it starts with NUL) and one spelled like its escape stay two owners", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      const tenant = SessionOwner.make("\u0000acme")
      const lookalike = SessionOwner.make("\\0acme")
      yield* store.appendTurn("t", tenant, turn("for the tenant", "ok"))
      expect(Option.getOrThrow(yield* store.get("t", tenant)).owner).toBe(tenant)
      expect(Option.isNone(yield* store.get("t", lookalike))).toBe(true)
      expect(yield* Effect.flip(store.resume("t", lookalike))).toBeInstanceOf(SessionOwnedByAnother)
      yield* store.saveResponse(new StoredResponse({ id: "resp_t", cacheKey: "\u0000acme\u0000salt", messages: [], body: {}, createdAt: 0 }))
      expect(Option.getOrThrow(yield* store.getResponse("resp_t")).cacheKey).toBe("\u0000acme\u0000salt")
    }).pipe(Effect.provide(store())))

  it.effect("stored responses: saving an id again replaces it; they read back, expire and delete", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      const response = (text: string, createdAt: number) =>
        new StoredResponse({ id: "resp_1", cacheKey: "k", messages: [{ role: "user", content: text }], body: { output: text }, createdAt })
      yield* store.saveResponse(response("first", 0))
      yield* store.saveResponse(response("second", 0))
      expect(Option.getOrThrow(yield* store.getResponse("resp_1"))).toMatchObject({ body: { output: "second" }, createdAt: 0 })
      yield* TestClock.adjust(1500)
      expect(Option.isNone(yield* store.getResponse("resp_1"))).toBe(true)
      yield* store.saveResponse(response("third", 1500))
      expect(yield* store.removeResponse("resp_1")).toBe(true)
      expect(yield* store.removeResponse("resp_1")).toBe(false)
    }).pipe(Effect.provide(store({ ttlMs: 1000, sweepIntervalMs: 1_000_000 }))))
})

const pg = storeBackends().find((backend) => backend.name === "postgres")!

describe.skipIf(!pg.available)("SessionStore: two replicas on one Postgres", () => {
  beforeAll(pg.setup, 90_000)
  afterAll(pg.teardown)

  /** `count` stores on one fresh database, as `count` replicas have them. */
  const replicas = (count: number) =>
    Effect.gen(function*() {
      const database = pg.freshDatabase()
      const layer = SessionStore.Default.pipe(Layer.provide(pg.sqlLayer(database)), Layer.provide(SessionConfig.layer({ databasePath: database })))
      const stores = yield* Effect.forEach(Array.from({ length: count }), () => Effect.map(Layer.build(layer), Context.get(SessionStore)))
      return { stores, database }
    })

  it.scopedLive("a turn on one replica holds the session's turn lock on the others; other sessions are not blocked", () =>
    Effect.gen(function*() {
      const { stores: [a, b] } = yield* replicas(2)
      const holding = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const order: Array<string> = []
      const first = yield* Effect.fork(a!.withTurnLock("s", Effect.gen(function*() {
        order.push("a start")
        yield* Deferred.succeed(holding, undefined)
        yield* Deferred.await(release)
        order.push("a end")
      })))
      yield* Deferred.await(holding)
      const second = yield* Effect.fork(b!.withTurnLock("s", Effect.sync(() => order.push("b"))))
      yield* b!.withTurnLock("other", Effect.sync(() => order.push("b other session")))
      // Long enough for b to have polled the lock several times.
      yield* Effect.sleep("300 millis")
      expect(order).toEqual(["a start", "b other session"])
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(first)
      yield* Fiber.join(second)
      expect(order).toEqual(["a start", "b other session", "a end", "b"])
    }))

  it.scopedLive("turns of one session from three replicas at once lose none", () =>
    Effect.gen(function*() {
      const { stores } = yield* replicas(3)
      const turns = 6
      yield* Effect.forEach(
        stores.flatMap((store, replica) => Array.from({ length: turns }, (_, index) => ({ store, text: `r${replica}-${index}` }))),
        ({ store, text }) => store.withTurnLock("shared", store.appendTurn("shared", k, turn(text, `reply to ${text}`))),
        { concurrency: "unbounded" }
      )
      const session = Option.getOrThrow(yield* stores[0]!.get("shared", k))
      expect(session.turns).toBe(3 * turns)
      expect(session.messages).toHaveLength(2 * 3 * turns)
      expect(session.promptTokens).toBe(10 * 3 * turns)
    }))

  it.scopedLive("turns interrupted while holding or waiting for the turn lock leave no lock behind", () =>
    Effect.gen(function*() {
      const { stores: [a, b], database } = yield* replicas(2)
      const held = Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND granted`).pipe(
        Effect.provide(pg.sqlLayer(database)),
        Effect.map((rows) => Number(rows[0]!.n))
      )
      // Interrupted at many points: holding, between polls, just as the other replica lets go.
      for (let round = 0; round < 12; round++) {
        const holders = yield* Effect.forEach([0, 1, 2], (i) => Effect.fork(b!.withTurnLock(`s${i}`, Effect.sleep(`${(round * 7 + i * 13) % 60} millis`))))
        const waiters = yield* Effect.forEach([0, 1, 2], (i) => Effect.fork(a!.withTurnLock(`s${i}`, Effect.sleep(`${(round * 5 + i * 11) % 40} millis`))))
        yield* Effect.sleep(`${(round * 17) % 90} millis`)
        yield* Effect.forEach([...waiters, ...holders], Fiber.interrupt)
      }
      expect(yield* held).toBe(0)
    }))

  it.scopedLive("a replica that loses its connection (as when it dies) frees its turn locks at once", () =>
    Effect.gen(function*() {
      const { stores: [a, b], database } = yield* replicas(2)
      const holding = yield* Deferred.make<void>()
      yield* Effect.forkScoped(a!.withTurnLock("s", Effect.zipRight(Deferred.succeed(holding, undefined), Effect.never)))
      yield* Deferred.await(holding)
      const waiting = yield* Effect.fork(b!.withTurnLock("s", Effect.succeed("b got it")))
      yield* Effect.sleep("200 millis")
      expect(waiting.unsafePoll()).toBeNull()
      // Kill the connection that holds the lock, from outside, as a dead replica's connection ends.
      yield* Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql`SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted`).pipe(
        Effect.provide(pg.sqlLayer(database))
      )
      expect(yield* Fiber.join(waiting)).toBe("b got it")
    }))
})
