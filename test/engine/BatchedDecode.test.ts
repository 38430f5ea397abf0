import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { Backend } from "../../src/engine/Backend.js"
import type { BackendShape } from "../../src/engine/Backend.js"
import { LlamaBackend } from "../../src/engine/llama/LlamaBackend.js"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import { tinyModelPath } from "../support/tinyModel.js"

const backendOf = (parallel: number, prefillChunk: number) =>
  Effect.flatMap(Effect.promise(tinyModelPath), (modelPath) =>
    Effect.map(
      Layer.build(LlamaBackend.layer({ modelPath, parallel, contextSize: 256, threads: 2, gpu: false, prefillChunk })),
      (context) => Context.get(context, Backend)
    ))

/** Prompts of different lengths (one spanning several prefill chunks), each with its own seed. */
const jobs = [
  { prompt: [1, 20, 21, 22], seed: 1 },
  { prompt: [1, ...Array.from({ length: 37 }, (_, index) => 100 + index)], seed: 2 },
  { prompt: [1, 300], seed: 3 },
  { prompt: [1, ...Array.from({ length: 13 }, (_, index) => 900 + 3 * index)], seed: 4 }
]

const tokensToGenerate = 24

/** Generates on `slot` and returns the tokens; steps of concurrent calls are batched by the backend. */
const generate = (backend: BackendShape, slot: number, job: (typeof jobs)[number]) =>
  Effect.scoped(
    Effect.gen(function*() {
      const generation = yield* backend.start(slot, job.prompt, { ...defaultSampling, temperature: 0.9, seed: job.seed, ignoreEos: true })
      const tokens: Array<number> = []
      while (tokens.length < tokensToGenerate) {
        const step = yield* generation.next
        tokens.push(step.token)
      }
      return tokens
    })
  )

describe("batched decoding on the tiny model", () => {
  it.scopedLive("concurrent generations (one batch per step, chunked prefill) produce exactly the tokens of solo runs", () =>
    Effect.gen(function*() {
      // Reference: one generation at a time, prompt in one piece.
      const solo = yield* backendOf(1, 10_000)
      const expected: Array<Array<number>> = []
      for (const job of jobs) {
        expected.push(yield* generate(solo, 0, job))
        yield* solo.erase(0)
      }
      // All four at once on one context, prompts prefilled 8 tokens per step alongside the others' decodes.
      // (One slot more than jobs: a spare for the last phase.)
      const batched = yield* backendOf(jobs.length + 1, 8)
      const together = yield* Effect.forEach(jobs, (job, slot) => generate(batched, slot, job), { concurrency: "unbounded" })
      expect(together).toEqual(expected)
      for (let slot = 0; slot < jobs.length; slot++) {
        expect(batched.tokensOf(slot)).toEqual([...jobs[slot]!.prompt, ...expected[slot]!.slice(0, -1)])
      }
      // Again, staggered: generations join and leave while the others are mid-stream.
      for (let slot = 0; slot < jobs.length; slot++) yield* batched.erase(slot)
      const staggered = yield* Effect.forEach(
        jobs,
        (job, slot) => Effect.zipRight(Effect.sleep(`${slot * 15} millis`), generate(batched, slot, job)),
        { concurrency: "unbounded" }
      )
      expect(staggered).toEqual(expected)
      // Once more as the pool hands slots out: each is trimmed (joining the running generations' next step from then
      // on) and started while the others are mid-stream; a trimmed slot no request ever starts on holds no one up.
      const pooled = yield* Effect.forEach(
        jobs,
        (job, slot) =>
          Effect.sleep(`${slot * 15} millis`).pipe(
            Effect.zipRight(slot === 1 ? batched.trim(jobs.length, 0) : Effect.void),
            Effect.zipRight(batched.trim(slot, 0)),
            Effect.zipRight(generate(batched, slot, job))
          ),
        { concurrency: "unbounded" }
      )
      expect(pooled).toEqual(expected)
      for (let slot = 0; slot < jobs.length; slot++) {
        expect(batched.tokensOf(slot)).toEqual([...jobs[slot]!.prompt, ...expected[slot]!.slice(0, -1)])
      }
    }))
})
