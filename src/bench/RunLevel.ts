import { Effect } from "effect"
import type { BenchSettings } from "./BenchSettings.js"
import type { BenchTarget } from "./BenchTarget.js"
import { benchCompletionTokens, benchPromptText } from "./BenchPrompt.js"
import { backgroundLoad, cpuSnapshot } from "./CpuLoad.js"
import { summarize } from "./LevelResult.js"
import type { LevelResult, RequestSample } from "./LevelResult.js"

/**
 * Runs one level closed-loop: `concurrency` streams, each sending its next request as soon as the previous one ends.
 * A warm-up round (every stream at once) sizes one request's duration D; the streams then start staggered by
 * D / concurrency, as independent clients would arrive, rather than in lockstep; the window opens once all of them
 * run and lasts `seconds`.
 */
export const runLevel = (target: BenchTarget, settings: BenchSettings, concurrency: number, indexBase: number) =>
  Effect.gen(function*() {
    yield* target.prepare(concurrency)
    const words = Math.max(1, settings.promptTokens - 1)
    const call = (index: number, maxTokens: number) => ({
      index,
      prompt: benchPromptText(index, words),
      maxTokens,
      seed: index,
      temperature: settings.temperature
    })
    const streams = Array.from({ length: concurrency }, (_, stream) => stream)
    // Warm-up: every stream at once, short; a request's duration is estimated from its TTFT and inter-token gaps.
    const warmTokens = Math.min(settings.completionTokens, 16)
    const warmUp = yield* Effect.forEach(
      streams,
      (stream) => target.send(call(indexBase + 9_000 + stream, warmTokens)),
      { concurrency: "unbounded" }
    )
    const warm = summarize(target.name, concurrency, warmUp, { start: -Infinity, end: Infinity })
    const estimate = warm.ttftMs.p50 + (settings.completionTokens - 1) * warm.itlMs.p50
    const duration = Number.isFinite(estimate) && estimate > 0 ? estimate : 1000
    const startedAt = performance.now()
    const window = { start: startedAt + duration, end: startedAt + duration + settings.seconds * 1000 }
    const samples: Array<RequestSample> = []
    let next = indexBase
    const cpuBefore = cpuSnapshot(target.pids)
    yield* Effect.forEach(
      streams,
      (stream) =>
        Effect.gen(function*() {
          yield* Effect.sleep(Math.round((stream * duration) / concurrency))
          while (performance.now() < window.end) {
            const index = next++
            samples.push(yield* target.send(call(index, benchCompletionTokens(index, settings.completionTokens, settings.completionSpread))))
          }
        }),
      { concurrency: "unbounded", discard: true }
    )
    const load = backgroundLoad(cpuBefore, cpuSnapshot(target.pids))
    return { ...summarize(target.name, concurrency, samples, window), backgroundLoad: load }
  })

/** One measured level as a progress line. */
export const formatLine = (result: LevelResult) =>
  `  ${result.mode.padEnd(11)} ${String(result.concurrency).padStart(3)} streams  ${result.tokensPerSecond.toFixed(1).padStart(7)} tok/s` +
  `  TTFT p50 ${result.ttftMs.p50.toFixed(0)} ms p99 ${result.ttftMs.p99.toFixed(0)} ms  ITL p50 ${result.itlMs.p50.toFixed(1)} ms` +
  (result.backgroundLoad === undefined ? "" : `  other load ${(result.backgroundLoad * 100).toFixed(0)}%`) +
  (result.errors > 0 ? `  ${result.errors} errors (${result.firstError})` : "")
