import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Option, TestClock } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { SessionStore } from "../../src/sessions/SessionStore.js"

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
      yield* store.appendTurn("s1", "key-a", turn("hello", "hi there"))
      yield* store.appendTurn("s1", "key-a", turn("and then?", "then this"))
      const session = Option.getOrThrow(yield* store.get("s1"))
      expect(session.messages.map((message) => message.content)).toEqual(["hello", "hi there", "and then?", "then this"])
      expect(session).toMatchObject({ turns: 2, cacheKey: "key-a", promptTokens: 20, completionTokens: 8, cachedTokens: 12 })
      expect(yield* store.remove("s1")).toBe(true)
      expect(yield* store.remove("s1")).toBe(false)
      expect(Option.isNone(yield* store.get("s1"))).toBe(true)
    }).pipe(Effect.provide(SessionStore.layerSqlite({ databasePath: ":memory:" }))))

  it.live("sessions survive a restart (a new store on the same file)", () =>
    Effect.gen(function*() {
      const databasePath = tempDatabase()
      yield* Effect.scoped(
        Effect.flatMap(SessionStore, (store) => store.appendTurn("persist", "k", turn("remember me", "ok"))).pipe(
          Effect.provide(SessionStore.layerSqlite({ databasePath }))
        )
      )
      const session = yield* Effect.flatMap(SessionStore, (store) => store.get("persist")).pipe(
        Effect.provide(SessionStore.layerSqlite({ databasePath }))
      )
      expect(Option.getOrThrow(session).messages[0]!.content).toBe("remember me")
    }))

  it.effect("idle sessions expire after the TTL and are swept", () =>
    Effect.gen(function*() {
      const store = yield* SessionStore
      yield* store.appendTurn("old", "k", turn("a", "b"))
      yield* TestClock.adjust(500)
      yield* store.appendTurn("fresh", "k", turn("c", "d"))
      yield* TestClock.adjust(600)
      expect(Option.isNone(yield* store.get("old"))).toBe(true)
      expect(Option.isSome(yield* store.get("fresh"))).toBe(true)
      expect(yield* store.sweepExpired).toBe(1)
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
