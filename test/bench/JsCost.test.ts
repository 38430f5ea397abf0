import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { measureJsCost } from "../../src/bench/JsCost.js"

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
    }), 60_000)
})
