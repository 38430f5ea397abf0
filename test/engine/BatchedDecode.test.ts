import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { Backend } from "../../src/engine/Backend.js"
import type { BackendShape, StepResult } from "../../src/engine/Backend.js"
import { LlamaBackend } from "../../src/engine/llama/LlamaBackend.js"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import type { SamplingOptions } from "../../src/engine/SamplingOptions.js"
import { tinyModelPath } from "../support/tinyModel.js"

const backendOf = (parallel: number, prefillChunk: number, directSteps = true) =>
  Effect.flatMap(Effect.promise(tinyModelPath), (modelPath) =>
    Effect.map(
      Layer.build(LlamaBackend.layer({ modelPath, parallel, contextSize: 256, threads: 2, gpu: false, prefillChunk, directSteps })),
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

/** Every step of one generation of up to `limit` tokens on `slot`, until the end of generation. */
const stepsOf = (backend: BackendShape, slot: number, prompt: ReadonlyArray<number>, sampling: SamplingOptions, limit: number) =>
  Effect.scoped(
    Effect.gen(function*() {
      const generation = yield* backend.start(slot, prompt, sampling)
      const steps: Array<StepResult> = []
      while (steps.length < limit) {
        const step = yield* generation.next
        steps.push(step)
        if (step._tag === "EndOfGeneration") break
      }
      return steps
    })
  )

describe("the direct decode path", () => {
  it.scopedLive("samples exactly what node-llama-cpp's sequence.evaluate does, penalties, logprobs and grammars included", () =>
    Effect.gen(function*() {
      const sampled = { ...defaultSampling, temperature: 0.9, ignoreEos: true }
      const cases: ReadonlyArray<{ readonly prompt: ReadonlyArray<number>; readonly sampling: SamplingOptions }> = [
        { prompt: jobs[0]!.prompt, sampling: { ...sampled, seed: 5 } },
        // Penalties look at the generation's own tokens: their window changes every step.
        { prompt: jobs[1]!.prompt, sampling: { ...sampled, seed: 6, repeatPenalty: 1.5, presencePenalty: 0.8, frequencyPenalty: 0.4 } },
        { prompt: jobs[2]!.prompt, sampling: { ...sampled, seed: 7, logprobs: 3 } },
        { prompt: jobs[3]!.prompt, sampling: { ...defaultSampling, temperature: 0.9, seed: 8, ignoreEos: false, grammar: { _tag: "Json" } } }
      ]
      // Prompts of 38 tokens in chunks of 8: prefill steps without sampling go through each path too.
      const evaluate = yield* backendOf(2, 8, false)
      const direct = yield* backendOf(2, 8, true)
      for (const { prompt, sampling } of cases) {
        // Past the penalties' window of 64 tokens, where it starts to slide.
        const expected = yield* stepsOf(evaluate, 0, prompt, sampling, 90)
        const actual = yield* stepsOf(direct, 0, prompt, sampling, 90)
        expect(actual).toEqual(expected)
        expect(direct.tokensOf(0)).toEqual(evaluate.tokensOf(0))
        yield* evaluate.erase(0)
        yield* direct.erase(0)
      }
      // What the cases above must exercise for the comparison to mean anything.
      const penalised = yield* stepsOf(direct, 1, cases[1]!.prompt, { ...cases[1]!.sampling, repeatPenalty: 1, presencePenalty: 0, frequencyPenalty: 0 }, 40)
      const withPenalties = yield* stepsOf(direct, 0, cases[1]!.prompt, cases[1]!.sampling, 40)
      expect(penalised.map((step) => step.token)).not.toEqual(withPenalties.map((step) => step.token))
      yield* direct.erase(0)
      const withLogprobs = yield* stepsOf(direct, 0, cases[2]!.prompt, cases[2]!.sampling, 4)
      expect(withLogprobs.every((step) => step._tag === "Token" && step.logprobs?.top.length === 3)).toBe(true)
    }))
})
