import { describe, expect, it, layer } from "@effect/vitest"
import { Chunk, Deferred, Effect, Either, Fiber, Layer, Stream } from "effect"
import { Backend, DecodeFailed } from "../../../src/engine/Backend.js"
import type { BackendShape } from "../../../src/engine/Backend.js"
import { LlamaBackend } from "../../../src/engine/llama/LlamaBackend.js"
import { defaultSampling } from "../../../src/engine/SamplingOptions.js"
import { SeqPool } from "../../../src/engine/SeqPool.js"
import type { SeqPoolStats } from "../../../src/engine/SeqPool.js"
import { TextAssembler } from "../../../src/engine/TextAssembler.js"
import type { GenerationEvent, GenerationRequest } from "../../../src/scheduler/GenerationRequest.js"
import { RequestScheduler } from "../../../src/scheduler/RequestScheduler.js"
import { SchedulerConfig } from "../../../src/scheduler/SchedulerConfig.js"
import { tinyModelPath } from "../../support/tinyModel.js"

const parallel = 4

/**
 * Fails the decode step that would produce token `failAt` of any prompt starting with `failureMarker`, and makes
 * every step of prompts starting with `slowMarker` (or `failureMarker`) take at least `slowStepMs`, so a test's
 * timeout or interrupt lands mid-generation however fast the machine decodes the tiny model.
 */
const injectFaults = (backend: BackendShape, failAt: number): BackendShape => ({
  ...backend,
  start: (slot, prompt, sampling) =>
    Effect.map(backend.start(slot, prompt, sampling), (generation) => {
      // The slot may already hold a reused prefix of the prompt: look at the whole prompt.
      const marker = [...backend.tokensOf(slot), ...prompt][1]
      if (marker !== failureMarker && marker !== slowMarker) return generation
      let produced = 0
      const slowStep = Effect.zipRight(Effect.sleep(slowStepMs), generation.next)
      return {
        next: Effect.suspend(() =>
          marker === failureMarker && produced + 1 === failAt
            ? new DecodeFailed({ slot, stage: "decode", message: "injected failure" })
            : Effect.tap(slowStep, () => Effect.sync(() => produced++))
        )
      }
    })
})

// `<|im_start|>` and `<|im_end|>`: valid tokens that a plain-text prompt never contains.
const failureMarker = 3
const slowMarker = 4
const slowStepMs = 20

const llamaLayer = Layer.unwrapEffect(
  Effect.map(Effect.promise(tinyModelPath), (modelPath) =>
    LlamaBackend.layer({ modelPath, parallel, contextSize: 256, threads: 2, gpu: false }))
)

const backendLayer = Layer.effect(Backend, Effect.map(Backend, (backend) => injectFaults(backend, 3))).pipe(
  Layer.provide(llamaLayer)
)

const engineLayer = RequestScheduler.Default.pipe(
  Layer.provideMerge(SeqPool.Default),
  Layer.provide(SchedulerConfig.layer({ maxQueue: 16, shutdownGraceMs: 0 })),
  Layer.provideMerge(backendLayer)
)

const request = (id: string, prompt: ReadonlyArray<number>, overrides: Partial<GenerationRequest> = {}): GenerationRequest => ({
  id,
  prompt,
  sampling: { ...defaultSampling, temperature: 0.9, seed: 11, ignoreEos: true },
  maxTokens: 24,
  ...overrides
})

const run = (scheduler: RequestScheduler, req: GenerationRequest) =>
  scheduler.submit(req).pipe(Stream.runCollect, Effect.map(Chunk.toReadonlyArray))

const textOf = (events: ReadonlyArray<GenerationEvent>) =>
  events.map((event) => (event._tag === "Delta" ? event.text : "")).join("")

/** After every request ended, nothing is running and the cached prefixes account for every cell the engine holds. */
const expectOnlyCachedCells = (stats: SeqPoolStats, backend: BackendShape) => {
  expect(stats.runningTokens).toBe(0)
  let cells = 0
  for (let slot = 0; slot < parallel; slot++) cells += backend.cells(slot)
  expect(stats.cachedTokens).toBe(cells)
  expect(stats.kvTokens).toBe(cells)
}

const finishedOf = (events: ReadonlyArray<GenerationEvent>) => {
  const last = events[events.length - 1]
  if (last?._tag !== "Finished") throw new Error("no Finished event")
  return last
}

describe("LlamaBackend on the tiny model", () => {
  layer(engineLayer, { timeout: 120_000, excludeTestServices: true })((it) => {
    it.effect("N concurrent generations share one context, each on its own slot", () =>
      Effect.gen(function*() {
        const scheduler = yield* RequestScheduler
        const backend = yield* Backend
        const prompt = yield* backend.tokenize("the weather today is", { special: false })
        const allRunning = yield* Deferred.make<void>()
        let peak = 0
        const watcher = yield* Effect.fork(
          Effect.repeat(
            Effect.flatMap(scheduler.stats, (stats) =>
              Effect.sync(() => {
                peak = Math.max(peak, stats.running)
                if (stats.running === parallel) Deferred.unsafeDone(allRunning, Effect.void)
              })),
            { until: () => peak === parallel }
          )
        )
        const results = yield* Effect.forEach(
          Array.from({ length: parallel }, (_, index) => index),
          (index) => run(scheduler, request(`c${index}`, [backend.info.bosToken!, ...prompt], { maxTokens: 48 })),
          { concurrency: "unbounded" }
        )
        yield* Fiber.interrupt(watcher)
        expect(peak).toBe(parallel)
        const slots = results.map((events) => (events[0]?._tag === "Started" ? events[0].slot : -1))
        expect(new Set(slots).size).toBe(parallel)
        for (const events of results) {
          expect(finishedOf(events)).toMatchObject({ finishReason: "length", usage: { completionTokens: 48 } })
        }
        const stats = yield* scheduler.stats
        expect(stats.slots.free).toBe(parallel)
        expectOnlyCachedCells(stats.slots, backend)
      }))

    it.effect("a timeout, an interrupt and an injected failure each free their slot; then N new requests run at once", () =>
      Effect.gen(function*() {
        const scheduler = yield* RequestScheduler
        const backend = yield* Backend
        const bos = backend.info.bosToken!
        const prompt = yield* backend.tokenize("hello there", { special: false })

        const timedOut = yield* Effect.fork(
          run(scheduler, request("t", [bos, slowMarker, ...prompt], { maxTokens: 100_000, timeouts: { totalMs: 300 } }))
        )
        const failed = yield* Effect.fork(run(scheduler, request("f", [bos, failureMarker, ...prompt])))
        const interrupted = yield* Effect.fork(run(scheduler, request("i", [bos, slowMarker, ...prompt], { maxTokens: 100_000 })))
        yield* Effect.repeat(scheduler.stats, { until: (stats) => stats.running === 3 })
        yield* Effect.sleep("50 millis")
        yield* Fiber.interrupt(interrupted)

        const timeout = finishedOf(yield* Fiber.join(timedOut))
        expect(timeout.finishReason).toBe("timeout")
        expect(timeout.error).toMatchObject({ _tag: "StageTimedOut", stage: "total", limitMs: 300 })
        const failure = finishedOf(yield* Fiber.join(failed))
        expect(failure.finishReason).toBe("error")
        expect(failure.error).toMatchObject({ _tag: "DecodeFailed", message: "injected failure" })
        expect(failure.usage.completionTokens).toBe(2)

        const recent = (yield* scheduler.inspect).recent
        expect(recent.find((record) => record.id === "i")).toMatchObject({ state: "Cancelled", cancelReason: "client" })
        let stats = yield* scheduler.stats
        expect(stats.slots.free).toBe(parallel)
        expectOnlyCachedCells(stats.slots, backend)
        // The failed generation's cells were erased, never kept as a prefix.
        const failedSlot = recent.find((record) => record.id === "f")!.slot!
        expect(backend.cells(failedSlot)).toBe(0)

        let peak = 0
        const watcher = yield* Effect.fork(
          Effect.repeat(Effect.map(scheduler.stats, (s) => (peak = Math.max(peak, s.running))), { until: () => peak === parallel })
        )
        yield* Effect.forEach(
          Array.from({ length: parallel }, (_, index) => index),
          (index) => run(scheduler, request(`after${index}`, [bos, ...prompt], { maxTokens: 32 })),
          { concurrency: "unbounded" }
        )
        yield* Fiber.interrupt(watcher)
        expect(peak).toBe(parallel)
        stats = yield* scheduler.stats
        expect(stats.slots.free).toBe(parallel)
      }))

    it.effect("ignore_eos under a grammar still ends when the grammar is complete, instead of wedging the context", () =>
      Effect.gen(function*() {
        const scheduler = yield* RequestScheduler
        const backend = yield* Backend
        // The prompt and seed the hostile-body property found: with end-of-generation banned, the sampler failed to
        // accept a token once the JSON object was complete, and no request on the context answered again.
        const prompt = [backend.info.bosToken!, ...(yield* backend.tokenize("\u{21FD9}\u{2D39B}\u{A3D77}", { special: true }))]
        const sampling = { ...defaultSampling, seed: 1, ignoreEos: true, grammar: { _tag: "Json" } as const }
        for (const id of ["g1", "g2", "g3"]) {
          const events = yield* run(scheduler, request(id, prompt, { sampling, maxTokens: 12 }))
          expect(["stop", "length"]).toContain(finishedOf(events).finishReason)
        }
        expect((yield* scheduler.stats).slots.free).toBe(parallel)
      }))

    it.effect("the same seed and prompt give the same text; another seed gives other text", () =>
      Effect.gen(function*() {
        const scheduler = yield* RequestScheduler
        const backend = yield* Backend
        const prompt = [backend.info.bosToken!, ...(yield* backend.tokenize("once upon a time", { special: false }))]
        const withSeed = (id: string, seed: number) =>
          run(scheduler, request(id, prompt, { sampling: { ...defaultSampling, temperature: 1, seed, ignoreEos: true }, maxTokens: 40 }))
        const first = textOf(yield* withSeed("s1", 1234))
        const second = textOf(yield* withSeed("s2", 1234))
        const other = textOf(yield* withSeed("s3", 4321))
        expect(first.length).toBeGreaterThan(0)
        expect(second).toBe(first)
        expect(other).not.toBe(first)
      }))

    it.effect("a stop string spanning two tokens ends the generation before it, never emitting it", () =>
      Effect.gen(function*() {
        const scheduler = yield* RequestScheduler
        const backend = yield* Backend
        const prompt = [backend.info.bosToken!, ...(yield* backend.tokenize("the story goes", { special: false }))]
        const base = request("free", prompt, { sampling: { ...defaultSampling, temperature: 0, seed: 1, ignoreEos: true }, maxTokens: 40 })
        const free = yield* run(scheduler, base)
        const deltas = free.flatMap((event) => (event._tag === "Delta" && event.tokens === 1 ? [event.text] : []))
        // A stop made of the last character of one token and the first of the next, so it can only match across tokens.
        const boundary = deltas.findIndex((text, index) =>
          index > 0 && text.length > 0 && deltas[index - 1]!.length > 0 && deltas[index - 1]!.trim().length > 0
        )
        expect(boundary).toBeGreaterThan(0)
        const previous = [...deltas[boundary - 1]!]
        const stop = previous[previous.length - 1]! + [...deltas[boundary]!][0]!
        const fullText = textOf(free)
        const stopped = yield* run(scheduler, { ...base, id: "stopped", stop: [stop] })
        expect(finishedOf(stopped).finishReason).toBe("stop")
        expect(textOf(stopped)).toBe(fullText.slice(0, fullText.indexOf(stop)))
        expect(textOf(stopped).includes(stop)).toBe(false)
      }))

    it.effect("incremental detokenization never splits a multi-byte character", () =>
      Effect.gen(function*() {
        const backend = yield* Backend
        // These characters are not pieces of the tiny vocab, so they tokenize to 2–4 byte tokens each.
        const text = "naïve ø and å, 🙂 then 日本 and € again 🙂🙂"
        const tokens = yield* backend.tokenize(text, { special: false })
        const byteTokens = tokens.filter((token) => backend.detokenize([token]) === "\uFFFD")
        expect(byteTokens.length).toBeGreaterThan(4)
        const assembler = new TextAssembler(backend.detokenize, [])
        const deltas = tokens.map((token) => assembler.push(token).text)
        deltas.push(assembler.finish().text)
        for (const delta of deltas) expect(delta.includes("\uFFFD")).toBe(false)
        expect(deltas.join("")).toBe(backend.detokenize(tokens))
        expect(deltas.join("").trimStart()).toBe(text)
      }))

    it.effect("streamed text equals the detokenized generation", () =>
      Effect.gen(function*() {
        const backend = yield* Backend
        const prompt = [backend.info.bosToken!, ...(yield* backend.tokenize("héllo 日本", { special: false }))]
        // Earlier tests may have left a cached prefix in slot 0; this test drives the slot directly.
        yield* backend.erase(0)
        const tokens = yield* Effect.scoped(
          Effect.gen(function*() {
            const generation = yield* backend.start(0, prompt, { ...defaultSampling, temperature: 1.2, seed: 3, ignoreEos: true })
            const produced: Array<number> = []
            for (let index = 0; index < 80; index++) produced.push((yield* generation.next).token)
            return produced
          })
        )
        yield* backend.erase(0)
        const assembler = new TextAssembler(backend.detokenize, [], prompt.slice(-4))
        const streamed = tokens.map((token) => assembler.push(token).text).join("") + assembler.finish().text
        expect(streamed).toBe(backend.detokenize(tokens, prompt.slice(-4)).replace(/\uFFFD+$/u, ""))
      }))
  })
})

describe("LlamaBackend on a missing model file", () => {
  it.scopedLive("fails with ModelLoadFailed, keeping what node-llama-cpp threw as its cause", () =>
    Effect.gen(function*() {
      const modelPath = "/nonexistent/weft-model.gguf"
      const outcome = yield* Effect.either(
        Layer.build(LlamaBackend.layer({ modelPath, parallel: 1, contextSize: 64, threads: 2, gpu: false }))
      )
      if (Either.isRight(outcome)) throw new Error("a missing model file loaded")
      const failure = outcome.left
      expect(failure).toMatchObject({ _tag: "ModelLoadFailed", path: modelPath })
      expect(failure.cause).toBeInstanceOf(Error)
      expect(failure.message).toBe((failure.cause as Error).message)
    }), 60_000)
})
