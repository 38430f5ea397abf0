import { describe, expect, layer } from "@effect/vitest"
import { Chunk, Effect, Layer, Stream } from "effect"
import { Backend } from "../../src/engine/Backend.js"
import type { ChatMessage } from "../../src/engine/Backend.js"
import { LlamaBackend } from "../../src/engine/llama/LlamaBackend.js"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import { PrefixCacheConfig, SeqPool } from "../../src/engine/SeqPool.js"
import type { GenerationEvent } from "../../src/scheduler/GenerationRequest.js"
import { RequestScheduler } from "../../src/scheduler/RequestScheduler.js"
import { SchedulerConfig } from "../../src/scheduler/SchedulerConfig.js"
import { tinyModelPath } from "../support/tinyModel.js"

const tinyEngine = (cacheLimit?: number) =>
  RequestScheduler.Default.pipe(
    Layer.provideMerge(SeqPool.Default),
    Layer.provide(SchedulerConfig.layer({ shutdownGraceMs: 0 })),
    Layer.provide(PrefixCacheConfig.layer({ maxCachedTokens: cacheLimit })),
    Layer.provideMerge(
      Layer.unwrapEffect(
        Effect.map(Effect.promise(tinyModelPath), (modelPath) =>
          LlamaBackend.layer({ modelPath, parallel: 4, contextSize: 1024, threads: 2, gpu: false }))
      )
    )
  )

const systemPrompt = "You are a careful assistant. ".repeat(30) + "Answer briefly and stay on topic."

/** Runs one request; returns its streamed text and usage (cached tokens say how much of the prompt was reused). */
const generate = (id: string, prompt: ReadonlyArray<number>, cacheKey = "tenant-a") =>
  Effect.gen(function*() {
    const scheduler = yield* RequestScheduler
    const events: ReadonlyArray<GenerationEvent> = Chunk.toReadonlyArray(
      yield* Stream.runCollect(
        scheduler.submit({
          id,
          prompt,
          sampling: { ...defaultSampling, seed: 5, ignoreEos: true },
          maxTokens: 12,
          cacheKey
        })
      )
    )
    const finished = events[events.length - 1]
    if (finished?._tag !== "Finished") throw new Error("no Finished event")
    const text = events.map((event) => (event._tag === "Delta" ? event.text : "")).join("")
    return { text, usage: finished.usage }
  })

describe("prefix cache on the tiny model", () => {
  layer(tinyEngine(), { timeout: 120_000, excludeTestServices: true })((it) => {
    it.effect("a 6-turn chat evaluates only each turn's new tokens", () =>
      Effect.gen(function*() {
        const backend = yield* Backend
        const messages: Array<ChatMessage> = [{ role: "system", content: systemPrompt }]
        let previousPrompt = 0
        const perTurn: Array<{ prompt: number; cached: number; evaluated: number }> = []
        for (let turn = 1; turn <= 6; turn++) {
          const userMessage = { role: "user", content: `Question number ${turn}: what about the weather?` } as const
          messages.push(userMessage)
          const prompt = yield* backend.renderChat(messages)
          const { text, usage } = yield* generate(`turn${turn}`, prompt)
          const evaluated = usage.promptTokens - usage.cachedTokens
          perTurn.push({ prompt: usage.promptTokens, cached: usage.cachedTokens, evaluated })
          if (turn > 1) {
            // Everything the previous turn's prompt held is reused (and the part of the reply whose tokens match);
            // what is evaluated is only what this turn added: the reply as re-rendered and the new user message.
            expect(usage.cachedTokens).toBeGreaterThanOrEqual(previousPrompt)
            expect(evaluated).toBeLessThanOrEqual(usage.promptTokens - previousPrompt)
          }
          previousPrompt = usage.promptTokens
          messages.push({ role: "assistant", content: text })
        }
        expect(perTurn[0]!.cached).toBe(0)
        expect(perTurn[0]!.evaluated).toBeGreaterThan(200)
      }))

    it.effect("another tenant with the same prefix gets no hit; the same tenant does", () =>
      Effect.gen(function*() {
        const backend = yield* Backend
        const prompt = yield* backend.renderChat([{ role: "system", content: systemPrompt + " Isolation." }, { role: "user", content: "hi" }])
        const first = yield* generate("iso1", prompt, "tenant-x")
        expect(first.usage.cachedTokens).toBe(0)
        const other = yield* generate("iso2", prompt, "tenant-y")
        expect(other.usage.cachedTokens).toBe(0)
        const same = yield* generate("iso3", prompt, "tenant-x")
        expect(same.usage.cachedTokens).toBe(prompt.length - 1)
      }))
  })

  layer(tinyEngine(60), { timeout: 120_000, excludeTestServices: true })((it) => {
    it.effect("eviction under a small limit keeps serving and stays under the limit", () =>
      Effect.gen(function*() {
        const backend = yield* Backend
        const pool = yield* SeqPool
        // Batches of 4 concurrent requests with distinct prompts leave 4 prefixes cached at once: over the limit.
        for (let batch = 0; batch < 3; batch++) {
          const prompts = yield* Effect.forEach([0, 1, 2, 3], (index) =>
            backend.renderChat([{ role: "system", content: `Batch ${batch} voice ${index}` }, { role: "user", content: `topic ${index * 7}` }]))
          const results = yield* Effect.forEach(prompts, (prompt, index) => generate(`e${batch}-${index}`, prompt), {
            concurrency: "unbounded"
          })
          for (const { usage } of results) expect(usage.completionTokens).toBe(12)
          const stats = yield* pool.stats
          expect(stats.cachedTokens).toBeLessThanOrEqual(0.8 * 60)
        }
        const stats = yield* pool.stats
        expect(stats.cache.evictions).toBeGreaterThan(0)
        let cells = 0
        for (let slot = 0; slot < 4; slot++) cells += backend.cells(slot)
        expect(stats.cachedTokens).toBe(cells)
      }))
  })
})
