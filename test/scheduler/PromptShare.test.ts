import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Fiber, TestClock } from "effect"
import { SeqPool } from "../../src/engine/SeqPool.js"
import { PromptShare } from "../../src/scheduler/PromptShare.js"
import { RequestScheduler } from "../../src/scheduler/RequestScheduler.js"
import { collect, finishedOf, simEngine, simRequest as request } from "../support/simEngine.js"

const prompt = Array.from({ length: 10 }, (_, i) => i + 1)
const engine = simEngine({ parallel: 3, contextSize: 64, tokenLatency: 10, prefillLatencyPerToken: 100 })

describe("PromptShare: choices of one prompt evaluate it once", () => {
  it.effect("the first choice to hold a slot evaluates the prompt; the others copy all but its last token", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const share = yield* PromptShare.make
      const fibers = yield* Effect.forEach(["a", "b", "c"], (id, choice) =>
        Effect.fork(collect(scheduler.submit(request(id, { prompt, promptShare: share, sampling: { ...request(id).sampling, seed: choice } })))))
      yield* TestClock.adjust(60_000)
      const finished = yield* Effect.forEach(fibers, (fiber) => Effect.map(Fiber.join(fiber), (events) => finishedOf(Either.getOrThrow(events))))
      expect(finished.map((event) => event.finishReason)).toEqual(["length", "length", "length"])
      expect(finished.map((event) => event.usage.cachedTokens).sort()).toEqual([0, 9, 9])
      expect((yield* (yield* SeqPool).stats).free).toBe(3)
    }).pipe(Effect.provide(engine)))

  it.effect("a leader cancelled before its prompt is in leaves the others to evaluate it themselves", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const share = yield* PromptShare.make
      const leader = yield* Effect.fork(collect(scheduler.submit(request("a", { prompt, promptShare: share }))))
      yield* TestClock.adjust(1)
      const followers = yield* Effect.forEach(["b", "c"], (id) => Effect.fork(collect(scheduler.submit(request(id, { prompt, promptShare: share })))))
      yield* TestClock.adjust(1)
      // Cancelling waits for the leader's step in flight, which ends only as the clock moves on.
      const cancelled = yield* Effect.fork(scheduler.cancel("a"))
      yield* TestClock.adjust(60_000)
      expect(yield* Fiber.join(cancelled)).toBe(true)
      expect(finishedOf(Either.getOrThrow(yield* Fiber.join(leader))).finishReason).toBe("cancelled")
      for (const fiber of followers) {
        const finished = finishedOf(Either.getOrThrow(yield* Fiber.join(fiber)))
        expect(finished.finishReason).toBe("length")
        expect(finished.usage.completionTokens).toBe(5)
      }
      expect((yield* (yield* SeqPool).stats).free).toBe(3)
    }).pipe(Effect.provide(engine)))
})
