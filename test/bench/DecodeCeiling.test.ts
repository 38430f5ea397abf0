import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import { makeDecodeCeiling } from "../../src/bench/DecodeCeiling.js"
import type { EngineBenchConfig } from "../../src/bench/InProcessTarget.js"
import { tinyModelPath } from "../support/tinyModel.js"

const config = (modelPath: string): EngineBenchConfig => ({
  modelPath,
  parallel: 2,
  contextSize: 256,
  threads: 1,
  flashAttention: true,
  gpu: false
})

describe("makeDecodeCeiling", () => {
  it.scopedLive("measures level after level in one child process, one token per sequence per step", () =>
    Effect.gen(function*() {
      const measure = yield* makeDecodeCeiling(config(yield* Effect.promise(tinyModelPath)))
      const one = yield* measure(1, 0.2, 0)
      const two = yield* measure(2, 0.2, 1)
      expect(one).toMatchObject({ concurrency: 1, round: 0 })
      expect(two).toMatchObject({ concurrency: 2, round: 1 })
      for (const result of [one, two]) {
        expect(result.tokensPerSecond).toBeGreaterThan(0)
        expect(result.msPerStep).toBeGreaterThan(0)
        // tok/s counts one token per sequence per step.
        expect(result.tokensPerSecond * result.msPerStep / 1000).toBeCloseTo(result.concurrency, 6)
      }
    }))

  it.scopedLive("a child that cannot load the model fails each measurement with DecodeCeilingFailed", () =>
    Effect.gen(function*() {
      const measure = yield* makeDecodeCeiling(config("/nonexistent/weft-model.gguf"))
      for (const round of [0, 1]) {
        const outcome = yield* Effect.either(measure(1, 0.1, round))
        expect(Either.isLeft(outcome) && outcome.left._tag).toBe("DecodeCeilingFailed")
        // The child's own account of why comes with it.
        expect(Either.isLeft(outcome) && outcome.left.message).toMatch(/ENOENT|nonexistent/)
      }
    }))
})
