import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Option, TestClock } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { SessionOwnedByAnother, SessionOwner, SessionStore, SessionStoreFailed } from "../../src/sessions/SessionStore.js"

const keyA = SessionOwner.make("key-a")
const keyB = SessionOwner.make("key-b")
const k = SessionOwner.make("k")

const turn = (user: string, reply: string) => ({
  newMessages: [{ role: "user", content: user }] as const,
  reply: { role: "assistant", content: reply } as const,
  usage: { promptTokens: 10, completionTokens: 4, cachedTokens: 6 }
})

const tempDatabase = () => path.join(fs.mkdtempSync(path.join(os.tmpdir(), "weft-sessions-")), "sessions.sqlite")

describe("SessionStore", () => {
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
    }).pipe(Effect.provide(SessionStore.layerSqlite({ databasePath: ":memory:" }))))

  it.live("sessions survive a restart (a new store on the same file)", () =>
    Effect.gen(function*() {
      const databasePath = tempDatabase()
      yield* Effect.scoped(
        Effect.flatMap(SessionStore, (store) => store.appendTurn("persist", k, turn("remember me", "ok"))).pipe(
          Effect.provide(SessionStore.layerSqlite({ databasePath }))
        )
      )
      const session = yield* Effect.flatMap(SessionStore, (store) => store.get("persist", k)).pipe(
        Effect.provide(SessionStore.layerSqlite({ databasePath }))
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
    }).pipe(Effect.provide(SessionStore.layerSqlite({ databasePath: ":memory:", ttlMs: 1000, sweepIntervalMs: 1_000_000 }))))

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
    }).pipe(Effect.provide(SessionStore.layerSqlite({ databasePath: ":memory:" }))))

  it.effect("an expired session's id is free again, for any owner", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      yield* store.appendTurn("reused", keyA, turn("old", "reply"))
      yield* TestClock.adjust(1500)
      expect(Option.isNone(yield* store.resume("reused", keyB))).toBe(true)
      yield* store.appendTurn("reused", keyB, turn("new", "reply"))
      expect(Option.getOrThrow(yield* store.get("reused", keyB)).messages[0]!.content).toBe("new")
      expect(Option.isNone(yield* store.get("reused", keyA))).toBe(true)
    }).pipe(Effect.provide(SessionStore.layerSqlite({ databasePath: ":memory:", ttlMs: 1000, sweepIntervalMs: 1_000_000 }))))

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
    }).pipe(Effect.provide(SessionStore.layerSqlite({ databasePath: ":memory:" }))))
})
