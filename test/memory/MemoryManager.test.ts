import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Ref, Scope } from "effect"
import { errorReply } from "../../src/http/OpenAiErrors.js"
import { MemoryBudgetExceeded, MemoryManager, MemoryPressure, recentRss } from "../../src/memory/MemoryManager.js"

const MiB = 1024 * 1024

const managerWith = (limitBytes: number, rss: Ref.Ref<number>) =>
  Effect.map(
    Layer.build(MemoryManager.layer({ limitBytes, lowWatermark: 0.9, measureRss: () => Effect.runSync(Ref.get(rss)), baselineBytes: 0 })),
    (context) => Context.get(context, MemoryManager)
  )

describe("MemoryManager", () => {
  it.scoped("commits reservations within the limit, refuses one that would pass it with the numbers, and frees on release", () =>
    Effect.gen(function*() {
      const memory = yield* managerWith(10 * MiB, yield* Ref.make(0))
      const first = yield* Scope.make()
      yield* memory.reserve({ label: "model a", model: "a", parts: { weights: 4 * MiB, context: 2 * MiB } }).pipe(Scope.extend(first))
      yield* memory.reserve({ label: "model b", model: "b", parts: { weights: 1 * MiB } })

      const refused = yield* Effect.flip(memory.reserve({ label: "model c", model: "c", parts: { weights: 4 * MiB } }))
      expect(refused).toBeInstanceOf(MemoryBudgetExceeded)
      expect(refused).toMatchObject({ requestedBytes: 4 * MiB, committedBytes: 7 * MiB, limitBytes: 10 * MiB })
      expect(refused.committed.map((held) => [held.model, held.bytes])).toEqual([["a", 6 * MiB], ["b", 1 * MiB]])
      expect((yield* memory.account).committedBytes).toBe(7 * MiB)
      // An adapter context or any other holder refused this way answers 507 in OpenAI's shape.
      expect(errorReply(refused)).toMatchObject({ status: 507, error: { type: "server_error", code: "insufficient_memory", param: null } })
      expect(refused.message).toBe("model c needs 4.0 MiB, but 7.0 MiB of the 10.0 MiB memory limit is committed; 3.0 MiB is free")

      yield* Scope.close(first, Exit.void)
      yield* memory.reserve({ label: "model c", model: "c", parts: { weights: 4 * MiB } })
      const account = yield* memory.account
      expect(account.reservations.map((held) => held.label)).toEqual(["model b", "model c"])
      expect(account).toMatchObject({ committedBytes: 5 * MiB, availableBytes: 5 * MiB, limitBytes: 10 * MiB })
    }))

  it.scoped("under pressure relieves first, then refuses new requests until RSS falls below the low watermark", () =>
    Effect.gen(function*() {
      const rss = yield* Ref.make(500)
      const memory = yield* managerWith(1000, rss)
      const relieved = yield* Ref.make(0)
      yield* memory.onPressure("model a", Ref.update(relieved, (count) => count + 1))

      yield* memory.admit
      expect(yield* Ref.get(relieved)).toBe(0)

      // Relief that brings RSS back under the limit lets the request in.
      yield* Ref.set(rss, 1200)
      yield* memory.onPressure("model b", Ref.set(rss, 800))
      yield* memory.admit
      expect(yield* Ref.get(relieved)).toBe(1)

      // Relief that does not: refused, and still refused above the low watermark (900) though under the limit.
      yield* Ref.set(rss, 1100)
      yield* memory.onPressure("model b", Effect.void)
      expect(yield* Effect.flip(memory.admit)).toBeInstanceOf(MemoryPressure)
      expect(yield* Ref.get(relieved)).toBe(2)
      yield* Ref.set(rss, 950)
      const refusal = yield* Effect.flip(memory.admit)
      expect(refusal).toMatchObject({ usedBytes: 950, limitBytes: 1000, lowWatermarkBytes: 900 })
      expect(refusal.retryAfterSeconds).toBeGreaterThan(0)
      expect((yield* memory.account).underPressure).toBe(true)

      yield* Ref.set(rss, 850)
      yield* memory.admit
      expect((yield* memory.account).underPressure).toBe(false)
      yield* Ref.set(rss, 950)
      yield* memory.admit
    }))

  it("reads the process's RSS at most once per interval, and again once it has passed", () => {
    let clock = 0
    const reads: Array<number> = []
    const rss = recentRss(100, () => {
      reads.push(clock)
      return 1000 + clock
    }, () => clock)
    expect(rss()).toBe(1000)
    clock = 99
    expect(rss()).toBe(1000)
    clock = 100
    expect(rss()).toBe(1100)
    clock = 150
    expect(rss()).toBe(1100)
    expect(reads).toEqual([0, 100])
  })
})
