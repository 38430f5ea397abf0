import type { PrefixCacheStats } from "../engine/SeqPool.js"
import type { OutcomeLabel } from "../scheduler/RequestLifecycle.js"
import type { SchedulerStats } from "../scheduler/RequestScheduler.js"
import { RateWindow, SlidingWindow } from "./SlidingWindow.js"
import type { Percentiles } from "./SlidingWindow.js"

/** How far back `/admin/stats` percentiles look. */
const percentileWindowMs = 5 * 60_000
/** How far back "now" rates look. */
const rateWindowSeconds = 10

/** The numbers a dashboard needs, as `GET /admin/stats` answers them. Durations are milliseconds. */
export interface AdminStats {
  readonly model: string
  readonly windowSeconds: number
  readonly latencyMs: {
    readonly queueWait: Percentiles
    readonly timeToFirstToken: Percentiles
    readonly interToken: Percentiles
    readonly total: Percentiles
  }
  readonly throughput: {
    readonly windowSeconds: number
    readonly generationTokensPerSecond: number
    readonly promptTokensPerSecond: number
    readonly requestsPerSecond: number
  }
  readonly requests: {
    readonly running: number
    readonly queued: number
    readonly queueLimit: number
    readonly draining: boolean
    /** Since start, by outcome. */
    readonly finished: Readonly<Record<OutcomeLabel, number>>
  }
  readonly slots: { readonly total: number; readonly free: number; readonly quarantined: number }
  readonly kvCache: {
    readonly tokens: number
    readonly runningTokens: number
    readonly cachedTokens: number
    readonly bytes: number
    readonly capacityTokens: number
    readonly usageRatio: number
  }
  readonly prefixCache: PrefixCacheStats & {
    /** Hits over lookups; `null` before the first lookup. */
    readonly hitRate: number | null
    /** Prompt tokens served from the cache over all prompt tokens of requests that got a slot. */
    readonly tokenHitRate: number | null
  }
}

/** The latency samples behind the dashboard's percentiles. */
export const makeStatsWindows = () => ({
  queueWait: new SlidingWindow(percentileWindowMs),
  timeToFirstToken: new SlidingWindow(percentileWindowMs),
  interToken: new SlidingWindow(percentileWindowMs, 32_768),
  total: new SlidingWindow(percentileWindowMs)
})

/** The counts behind the dashboard's "now" rates. */
export const makeStatsRates = () => ({
  generationTokens: new RateWindow(rateWindowSeconds),
  promptTokens: new RateWindow(rateWindowSeconds),
  requests: new RateWindow(rateWindowSeconds)
})

const ratio = (part: number, whole: number): number | null => (whole === 0 ? null : part / whole)

/** The dashboard view at `now`, from the scheduler's stats and what the metrics consumer has gathered. */
export const adminStatsOf = (input: {
  readonly model: string
  readonly contextSize: number
  readonly now: number
  readonly stats: SchedulerStats
  readonly windows: ReturnType<typeof makeStatsWindows>
  readonly rates: ReturnType<typeof makeStatsRates>
  readonly finished: Readonly<Record<OutcomeLabel, number>>
  /** Prompt tokens of every request that got a slot. */
  readonly promptTokensStarted: number
}): AdminStats => {
  const { now, rates, stats, windows } = input
  const capacity = stats.slots.total * input.contextSize
  const cache = stats.slots.cache
  return {
    model: input.model,
    windowSeconds: percentileWindowMs / 1000,
    latencyMs: {
      queueWait: windows.queueWait.percentiles(now),
      timeToFirstToken: windows.timeToFirstToken.percentiles(now),
      interToken: windows.interToken.percentiles(now),
      total: windows.total.percentiles(now)
    },
    throughput: {
      windowSeconds: rateWindowSeconds,
      generationTokensPerSecond: rates.generationTokens.perSecond(now),
      promptTokensPerSecond: rates.promptTokens.perSecond(now),
      requestsPerSecond: rates.requests.perSecond(now)
    },
    requests: {
      running: stats.running,
      queued: stats.queued,
      queueLimit: stats.queueLimit,
      draining: stats.draining,
      finished: { ...input.finished }
    },
    slots: { total: stats.slots.total, free: stats.slots.free, quarantined: stats.slots.quarantined.length },
    kvCache: {
      tokens: stats.slots.kvTokens,
      runningTokens: stats.slots.runningTokens,
      cachedTokens: stats.slots.cachedTokens,
      bytes: stats.slots.kvBytes,
      capacityTokens: capacity,
      usageRatio: capacity === 0 ? 0 : stats.slots.kvTokens / capacity
    },
    prefixCache: {
      ...cache,
      hitRate: ratio(cache.hits, cache.lookups),
      tokenHitRate: ratio(cache.hitTokens, input.promptTokensStarted)
    }
  }
}
