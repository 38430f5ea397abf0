import { quantilesOfSorted } from "../observability/Percentiles.js"
import type { Quantiles } from "../observability/Percentiles.js"

/** What one request of a benchmark saw; times are `performance.now()` milliseconds. */
export interface RequestSample {
  readonly ok: boolean
  readonly error?: string | undefined
  readonly startedAt: number
  readonly endedAt: number
  /** Arrival time of every chunk that carried generated text, in order. */
  readonly chunkTimes: ReadonlyArray<number>
  readonly completionTokens: number
  readonly promptTokens?: number | undefined
}

/** Percentiles of a latency distribution, in milliseconds (NaN when it holds no sample). */
export type Percentiles = Quantiles

/** One closed-loop concurrency level of one mode, summarised. */
export interface LevelResult {
  readonly mode: string
  readonly concurrency: number
  readonly requests: number
  readonly errors: number
  /** First error message seen, so a broken run says why. */
  readonly firstError?: string | undefined
  readonly seconds: number
  readonly completionTokens: number
  /** Aggregate generated tokens per second over the whole level. */
  readonly tokensPerSecond: number
  readonly promptTokens: number | undefined
  readonly ttftMs: Percentiles
  /** Time between consecutive text chunks of one request. */
  readonly itlMs: Percentiles
  readonly e2eMs: Percentiles
  /**
   * Each measured request's TTFT and end-to-end time, so a run's percentiles can be taken over all its rounds'
   * requests: one round at 16 streams measures a few dozen requests, and its own p99 is its slowest one or two.
   */
  readonly latencySamples?: { readonly ttftMs: ReadonlyArray<number>; readonly e2eMs: ReadonlyArray<number> } | undefined
  /** Share of the machine's CPU other processes used meanwhile (Linux only): runs are comparable only when it is low. */
  readonly backgroundLoad?: number | undefined
  /** Which repetition of this mode and level it was. */
  readonly round?: number | undefined
}

const noSamples: Percentiles = { p50: Number.NaN, p95: Number.NaN, p99: Number.NaN, max: Number.NaN }

/** p50, p95, p99 and max of `values` (any order). */
export const percentiles = (values: ReadonlyArray<number>): Percentiles =>
  quantilesOfSorted([...values].sort((a, b) => a - b)) ?? noSamples

const tenthOfMs = (ms: number) => Math.round(ms * 10) / 10

/** Inter-chunk gaps of one request (its first chunk's wait is TTFT, not a gap). */
export const gapsOf = (sample: RequestSample): Array<number> => {
  const gaps: Array<number> = []
  for (let index = 1; index < sample.chunkTimes.length; index++) {
    gaps.push(sample.chunkTimes[index]! - sample.chunkTimes[index - 1]!)
  }
  return gaps
}

/** The measurement window of a level, in `performance.now()` milliseconds. */
export interface MeasureWindow {
  readonly start: number
  readonly end: number
}

/** Generated tokens of `sample` that arrived inside `window` (tokens per chunk taken from the request's usage). */
const tokensInWindow = (sample: RequestSample, window: MeasureWindow): number => {
  if (!sample.ok || sample.chunkTimes.length === 0) return 0
  const perChunk = sample.completionTokens / sample.chunkTimes.length
  let chunks = 0
  for (const at of sample.chunkTimes) if (at >= window.start && at < window.end) chunks++
  return chunks * perChunk
}

/**
 * Summarises one level. Throughput counts the tokens that arrived inside the window (all streams running, none
 * ramping up or draining); latencies are over the requests that started inside it.
 */
export const summarize = (
  mode: string,
  concurrency: number,
  samples: ReadonlyArray<RequestSample>,
  window: MeasureWindow
): LevelResult => {
  const measured = samples.filter((sample) => sample.startedAt >= window.start && sample.startedAt < window.end)
  const succeeded = measured.filter((sample) => sample.ok)
  const failed = measured.filter((sample) => !sample.ok)
  const seconds = (window.end - window.start) / 1000
  const completionTokens = Math.round(samples.reduce((sum, sample) => sum + tokensInWindow(sample, window), 0))
  const prompt = succeeded.find((sample) => sample.promptTokens !== undefined)?.promptTokens
  const ttfts = succeeded.filter((sample) => sample.chunkTimes.length > 0).map((sample) => sample.chunkTimes[0]! - sample.startedAt)
  const e2es = succeeded.map((sample) => sample.endedAt - sample.startedAt)
  return {
    mode,
    concurrency,
    requests: measured.length,
    errors: failed.length,
    firstError: failed[0]?.error,
    seconds,
    completionTokens,
    tokensPerSecond: seconds > 0 ? completionTokens / seconds : 0,
    promptTokens: prompt,
    ttftMs: percentiles(ttfts),
    itlMs: percentiles(succeeded.flatMap(gapsOf)),
    e2eMs: percentiles(e2es),
    latencySamples: { ttftMs: ttfts.map(tenthOfMs), e2eMs: e2es.map(tenthOfMs) }
  }
}
