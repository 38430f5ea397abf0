import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { completions, jsCostServer, measureJsCost } from "../../src/bench/JsCost.js"

describe("measureJsCost", () => {
  it.live("serves streamed completions and /health from its child and reports the CPU they cost", () =>
    Effect.gen(function*() {
      const cost = yield* measureJsCost(8)
      expect(cost.shortRequests).toBe(8)
      expect(cost.longRequests).toBe(2)
      // Every completion and health check ran in the child (each checked its answer), and each cost it some CPU.
      expect(cost.healthMs).toBeGreaterThan(0)
      expect(Number.isFinite(cost.perTokenMs)).toBe(true)
      expect(Number.isFinite(cost.perRequestMs)).toBe(true)
      expect(cost.perRequestMs + 16 * cost.perTokenMs).toBeGreaterThan(0)
      // The child's Effect runtime ran steps for each of them.
      expect(cost.effectSteps.health).toBeGreaterThan(0)
      expect(cost.effectSteps.perToken).toBeGreaterThan(0)
      expect(cost.effectSteps.perRequest).toBeGreaterThan(cost.effectSteps.health)
    }), 60_000)

  it.live("runs its simulated backend at the token spacing asked for", () =>
    Effect.scoped(Effect.gen(function*() {
      const { url } = yield* jsCostServer(40)
      const started = Date.now()
      // Checks each answer: 200, ending with `[DONE]`.
      yield* completions(url, 1, 16)
      // 16 tokens, each no sooner than 40 ms after the one before (at the default 1 ms they take a few ms in all).
      expect(Date.now() - started).toBeGreaterThanOrEqual(16 * 40)
    })), 60_000)
})
