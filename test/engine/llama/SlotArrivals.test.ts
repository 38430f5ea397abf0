import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope, TestClock } from "effect"
import { makeSlotArrivals } from "../../../src/engine/llama/SlotArrivals.js"
import type { StepParticipant } from "../../../src/engine/StepBatcher.js"

/** A batcher that only records who joined and who left. */
const recordingBatcher = () => {
  const joined: Array<StepParticipant> = []
  const left = new Set<StepParticipant>()
  const join = (): StepParticipant => {
    const participant: StepParticipant = {
      step: (issue) => issue(),
      leave: () => void left.add(participant)
    }
    joined.push(participant)
    return participant
  }
  return { join, joined, left }
}

/** Arrivals with a 50 ms grace period, in the test's scope, on a recording batcher. */
const withRecorder = Effect.suspend(() => {
  const batcher = recordingBatcher()
  return Effect.map(makeSlotArrivals(batcher, 50), (arrivals) => ({
    arrivals,
    batcher,
    /** What `trim` does with a slot: it arrives, and its expiry starts once the KV edit is done. */
    trim: (slot: number) => {
      const participant = arrivals.arrive(slot)
      return Effect.as(arrivals.expire(slot, participant), participant)
    }
  }))
})

/** Lets the expiry fibers reach their sleep, then moves the test clock on by `ms`. */
const advance = (ms: number) => Effect.zipRight(Effect.yieldNow(), TestClock.adjust(ms))

describe("SlotArrivals", () => {
  it.scoped("an arrival nobody claims leaves after the grace period, not before", () =>
    Effect.gen(function*() {
      const { arrivals, batcher, trim } = yield* withRecorder
      const participant = yield* trim(0)
      yield* advance(49)
      expect(batcher.left.has(participant)).toBe(false)
      yield* advance(1)
      expect(batcher.left.has(participant)).toBe(true)
      const fresh = arrivals.claim(0)
      expect(fresh).not.toBe(participant)
      expect(batcher.joined).toEqual([participant, fresh])
    }))

  it.scoped("a claimed arrival belongs to its generation: the expiry leaves it alone", () =>
    Effect.gen(function*() {
      const { arrivals, batcher, trim } = yield* withRecorder
      const participant = yield* trim(1)
      expect(arrivals.claim(1)).toBe(participant)
      yield* advance(100)
      expect(batcher.left.size).toBe(0)
    }))

  it.scoped("a new arrival on a slot replaces the old one, and the old one's expiry does not touch it", () =>
    Effect.gen(function*() {
      const { arrivals, batcher, trim } = yield* withRecorder
      const first = yield* trim(2)
      yield* advance(20)
      const second = arrivals.arrive(2)
      expect(batcher.left.has(first)).toBe(true)
      yield* advance(40)
      expect(batcher.left.has(second)).toBe(false)
      expect(arrivals.claim(2)).toBe(second)
    }))

  it.effect("closing the backend's scope ends the pending expiries at once, even one started uninterruptibly", () =>
    Effect.gen(function*() {
      const batcher = recordingBatcher()
      const scope = yield* Scope.make()
      const arrivals = yield* Scope.extend(makeSlotArrivals(batcher, 50), scope)
      // As `trim` does: the expiry starts in the release of an acquireUseRelease.
      yield* Effect.uninterruptible(arrivals.expire(3, arrivals.arrive(3)))
      yield* Effect.yieldNow()
      // Were the expiry uninterruptible, this would wait for a sleep the test clock never ends.
      yield* Scope.close(scope, Exit.void)
      yield* advance(100)
      expect(batcher.left.size).toBe(0)
    }))
})
