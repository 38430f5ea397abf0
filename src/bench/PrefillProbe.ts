import { Deferred, Effect, Fiber } from "effect"
import type { BenchTarget } from "./BenchTarget.js"
import { benchPromptText } from "./BenchPrompt.js"
import { gapsOf, percentiles } from "./LevelResult.js"

/** What happened to running streams while a long prompt was prefilled next to them. */
export interface PrefillProbeResult {
  readonly mode: string
  readonly streams: number
  readonly longPromptTokens: number | undefined
  /** Inter-chunk gaps of the running streams before the long prompt arrived. */
  readonly steadyItlMs: { readonly p50: number; readonly p99: number }
  /** The longest gap of any running stream that overlapped the long prompt's prefill (arrival → its first token). */
  readonly maxGapDuringPrefillMs: number
  /** Time to first token of the long prompt. */
  readonly longTtftMs: number
  readonly errors: number
}

export interface PrefillProbeSettings {
  readonly streams: number
  readonly longPromptWords: number
  readonly shortPromptWords: number
  /** Chunks each running stream must have received before the long prompt is sent. */
  readonly warmChunks: number
  readonly temperature: number
}

/**
 * Starts `streams` generations, and once each is streaming sends one request with a long prompt; reports how long
 * the running streams stalled while it was prefilled. Without chunked prefill the stall is the whole prompt's
 * evaluation; with it, about one chunk.
 */
export const runPrefillProbe = (target: BenchTarget, settings: PrefillProbeSettings, indexBase: number) =>
  Effect.gen(function*() {
    yield* target.prepare(settings.streams + 1)
    const warm = yield* Deferred.make<void>()
    let warmStreams = 0
    // Long enough to keep every stream running well past the long prompt's first token.
    const backgroundTokens = 64 + Math.ceil(settings.longPromptWords / 4)
    const background = yield* Effect.forEach(
      Array.from({ length: settings.streams }, (_, stream) => stream),
      (stream) => {
        let chunks = 0
        return Effect.fork(target.send({
          index: indexBase + stream,
          prompt: benchPromptText(indexBase + stream, settings.shortPromptWords),
          maxTokens: backgroundTokens,
          seed: indexBase + stream,
          temperature: settings.temperature,
          onChunk: () => {
            chunks += 1
            if (chunks === settings.warmChunks && ++warmStreams === settings.streams) Deferred.unsafeDone(warm, Effect.void)
          }
        }))
      }
    )
    yield* Deferred.await(warm).pipe(Effect.timeout("120 seconds"), Effect.ignore)
    const long = yield* target.send({
      index: indexBase + settings.streams,
      prompt: benchPromptText(indexBase + settings.streams, settings.longPromptWords),
      maxTokens: 4,
      seed: indexBase + settings.streams,
      temperature: settings.temperature
    })
    const samples = yield* Fiber.joinAll(background)
    const sentAt = long.startedAt
    const firstTokenAt = long.chunkTimes[0] ?? long.endedAt
    const steady: Array<number> = []
    let maxGap = 0
    for (const sample of samples) {
      const gaps = gapsOf(sample)
      gaps.forEach((gap, index) => {
        const end = sample.chunkTimes[index + 1]!
        const start = end - gap
        if (end <= sentAt) steady.push(gap)
        else if (start < firstTokenAt) maxGap = Math.max(maxGap, gap)
      })
    }
    const steadyPercentiles = percentiles(steady)
    return {
      mode: target.name,
      streams: settings.streams,
      longPromptTokens: long.promptTokens,
      steadyItlMs: { p50: steadyPercentiles.p50, p99: steadyPercentiles.p99 },
      maxGapDuringPrefillMs: maxGap,
      longTtftMs: firstTokenAt - sentAt,
      errors: [...samples, long].filter((sample) => !sample.ok).length
    } satisfies PrefillProbeResult
  })
