import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, FastCheck, Fiber, TestClock } from "effect"
import { RequestScheduler } from "../../src/scheduler/RequestScheduler.js"
import type { GenerationEvent } from "../../src/scheduler/GenerationRequest.js"
import { collect, finishedOf, simEngine, simRequest } from "../support/simEngine.js"

type Delta = Extract<GenerationEvent, { readonly _tag: "Delta" }>

/** Stops drawn from the simulator's output text (multi-byte characters included) and strings it never says. */
const stopArb = FastCheck.array(FastCheck.constantFrom("wör", "本", " to", "🙂", "ll", "o w", "zz", "é"), { maxLength: 2 })

describe("logprobs through the generation loop", () => {
  it.effect("each delta carries exactly the logprobs of the tokens it accounts for, whatever stops and limits end it", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const cases = FastCheck.sample(
        FastCheck.record({
          stop: stopArb,
          maxTokens: FastCheck.integer({ min: 1, max: 30 }),
          seed: FastCheck.nat(1000),
          top: FastCheck.integer({ min: 0, max: 20 }),
          eosAt: FastCheck.option(FastCheck.integer({ min: 0, max: 30 }), { nil: undefined })
        }),
        { numRuns: 40, seed: 15 }
      )
      for (const [i, example] of cases.entries()) {
        const request = simRequest(`r${i}`, {
          prompt: [1, 2, 3, example.eosAt ?? 200],
          maxTokens: example.maxTokens,
          stop: example.stop,
          sampling: { ...simRequest("x").sampling, seed: example.seed, logprobs: example.top }
        })
        const fiber = yield* Effect.fork(collect(scheduler.submit(request)))
        yield* TestClock.adjust(10_000)
        const events = Either.getOrThrow(yield* Fiber.join(fiber))
        const deltas = events.filter((event): event is Delta => event._tag === "Delta")
        let logprobs = 0
        for (const delta of deltas) {
          expect(delta.logprobs).toBeDefined()
          expect(delta.logprobs!.length).toBe(delta.tokens)
          for (const entry of delta.logprobs!) {
            expect(entry.top).toHaveLength(example.top)
            if (example.top > 0) expect(entry.top[0]).toEqual({ text: entry.text, logprob: entry.logprob })
          }
          logprobs += delta.logprobs!.length
        }
        expect(logprobs).toBe(finishedOf(events).usage.completionTokens)
      }
    }).pipe(Effect.provide(simEngine({ script: (prompt) => ({ eosAt: prompt[3] === 200 ? undefined : prompt[3] }) }))))

  it.effect("without logprobs asked for, deltas carry none", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const fiber = yield* Effect.fork(collect(scheduler.submit(simRequest("plain"))))
      yield* TestClock.adjust(1000)
      const events = Either.getOrThrow(yield* Fiber.join(fiber))
      for (const event of events) if (event._tag === "Delta") expect(event.logprobs).toBeUndefined()
    }).pipe(Effect.provide(simEngine())))
})
