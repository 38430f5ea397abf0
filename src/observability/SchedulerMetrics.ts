import { Clock, Effect, Metric, PubSub, Queue } from "effect"
import type { PrefixCacheStats } from "../engine/SeqPool.js"
import type { SchedulerEvent } from "../scheduler/RequestScheduler.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import type { RequestState } from "../scheduler/RequestLifecycle.js"
import { RateWindow, SlidingWindow } from "./SlidingWindow.js"
import type { Percentiles } from "./SlidingWindow.js"
import { WeftMetrics } from "./WeftMetrics.js"

/** How far back `/admin/stats` percentiles look. */
const percentileWindowMs = 5 * 60_000
/** How far back "now" rates look. */
const rateWindowSeconds = 10

const rejectionReasons = {
  QueueFull: "queue_full",
  ShuttingDown: "shutting_down",
  PromptTooLong: "prompt_too_long",
  PromptEmpty: "prompt_empty",
  PromptTokenInvalid: "prompt_token_invalid"
} as const satisfies Record<string, string>

const timeoutStages = { queue: "queue", firstToken: "first_token", total: "total" } as const
const cancelReasons = ["client", "cancel", "shutdown"] as const
const outcomes = {
  Completed: "completed",
  Failed: "failed",
  TimedOut: "timed_out",
  Cancelled: "cancelled",
  Rejected: "rejected"
} as const satisfies Partial<Record<RequestState, string>>

type Outcome = (typeof outcomes)[keyof typeof outcomes]

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
    readonly finished: Readonly<Record<Outcome, number>>
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

const ratio = (part: number, whole: number): number | null => (whole === 0 ? null : part / whole)

/**
 * Turns the scheduler's lifecycle events into Weft's metrics (Effect's registry, `/metrics`) and into sliding windows
 * (`/admin/stats`). Events are consumed on a fiber of the service's scope; gauges are sampled from the scheduler's
 * stats when scraped.
 */
export class SchedulerMetrics extends Effect.Service<SchedulerMetrics>()("weft/SchedulerMetrics", {
  scoped: Effect.gen(function*() {
    const scheduler = yield* RequestScheduler
    const info = scheduler.modelInfo
    const model = info.id
    const byModel = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) => Metric.tagged(metric, "model", model)
    const m = {
      generations: byModel(WeftMetrics.generations),
      requestDuration: byModel(WeftMetrics.requestDuration),
      queueWait: byModel(WeftMetrics.queueWait),
      timeToFirstToken: byModel(WeftMetrics.timeToFirstToken),
      interTokenLatency: byModel(WeftMetrics.interTokenLatency),
      promptTokens: byModel(WeftMetrics.promptTokens),
      generationTokens: byModel(WeftMetrics.generationTokens),
      rejections: byModel(WeftMetrics.rejections),
      timeouts: byModel(WeftMetrics.timeouts),
      cancellations: byModel(WeftMetrics.cancellations)
    }
    const gauge = {
      requestsRunning: byModel(WeftMetrics.requestsRunning),
      requestsQueued: byModel(WeftMetrics.requestsQueued),
      queueLimit: byModel(WeftMetrics.queueLimit),
      slotsTotal: byModel(WeftMetrics.slotsTotal),
      slotsFree: byModel(WeftMetrics.slotsFree),
      kvCacheTokens: byModel(WeftMetrics.kvCacheTokens),
      kvCacheCachedTokens: byModel(WeftMetrics.kvCacheCachedTokens),
      kvCacheBytes: byModel(WeftMetrics.kvCacheBytes),
      kvCacheUsageRatio: byModel(WeftMetrics.kvCacheUsageRatio)
    }
    const cacheCounters = {
      lookups: byModel(WeftMetrics.prefixCacheLookups),
      hits: byModel(WeftMetrics.prefixCacheHits),
      hitTokens: byModel(WeftMetrics.prefixCacheHitTokens),
      evictions: byModel(WeftMetrics.prefixCacheEvictions),
      evictedTokens: byModel(WeftMetrics.prefixCacheEvictedTokens)
    } satisfies Record<keyof PrefixCacheStats, unknown>

    // Every label value known up front starts at zero, so rates and alerts see the series before its first event.
    yield* Effect.all(
      [
        ...Object.values(outcomes).map((outcome) => Metric.incrementBy(Metric.tagged(m.generations, "outcome", outcome), 0)),
        ...Object.values(rejectionReasons).map((reason) => Metric.incrementBy(Metric.tagged(m.rejections, "reason", reason), 0)),
        ...Object.values(timeoutStages).map((stage) => Metric.incrementBy(Metric.tagged(m.timeouts, "stage", stage), 0)),
        ...cancelReasons.map((reason) => Metric.incrementBy(Metric.tagged(m.cancellations, "reason", reason), 0)),
        ...Object.values(cacheCounters).map((counter) => Metric.incrementBy(counter, 0)),
        Metric.incrementBy(m.promptTokens, 0),
        Metric.incrementBy(m.generationTokens, 0)
      ],
      { discard: true }
    )

    const windows = {
      queueWait: new SlidingWindow(percentileWindowMs),
      timeToFirstToken: new SlidingWindow(percentileWindowMs),
      interToken: new SlidingWindow(percentileWindowMs, 32_768),
      total: new SlidingWindow(percentileWindowMs)
    }
    const rates = {
      generationTokens: new RateWindow(rateWindowSeconds),
      promptTokens: new RateWindow(rateWindowSeconds),
      requests: new RateWindow(rateWindowSeconds)
    }
    const finished: Record<Outcome, number> = { completed: 0, failed: 0, timed_out: 0, cancelled: 0, rejected: 0 }
    let promptTokensStarted = 0
    /** Admission time and last token time of each live request. */
    const live = new Map<string, { readonly enqueuedAt: number; lastTokenAt: number | undefined }>()

    const observeQueueWait = (at: number, ms: number) =>
      Effect.suspend(() => {
        windows.queueWait.add(at, ms)
        return Metric.update(m.queueWait, ms / 1000)
      })

    const handle = (event: SchedulerEvent): Effect.Effect<void> => {
      switch (event._tag) {
        case "FirstToken": {
          const request = live.get(event.requestId)
          if (request === undefined) return Effect.void
          const ms = event.at - request.enqueuedAt
          windows.timeToFirstToken.add(event.at, ms)
          return Metric.update(m.timeToFirstToken, ms / 1000)
        }
        case "Token": {
          const request = live.get(event.requestId)
          rates.generationTokens.add(event.at, 1)
          const count = Metric.increment(m.generationTokens)
          if (request === undefined) return count
          const previous = request.lastTokenAt
          request.lastTokenAt = event.at
          if (previous === undefined) return count
          windows.interToken.add(event.at, event.at - previous)
          return Effect.zipRight(count, Metric.update(m.interTokenLatency, (event.at - previous) / 1000))
        }
        case "Transition": {
          const { record } = event
          switch (event.to) {
            case "Queued":
              live.set(record.id, { enqueuedAt: record.enqueuedAt, lastTokenAt: undefined })
              rates.requests.add(event.at, 1)
              return Effect.void
            case "Running":
              promptTokensStarted += record.promptTokens
              rates.promptTokens.add(event.at, record.promptTokens)
              return Effect.zipRight(
                observeQueueWait(event.at, event.at - record.enqueuedAt),
                Metric.incrementBy(m.promptTokens, record.promptTokens)
              )
            case "Rejected": {
              finished.rejected += 1
              rates.requests.add(event.at, 1)
              const reason = rejectionReasons[record.detail as keyof typeof rejectionReasons] ?? "other"
              return Effect.zipRight(
                Metric.increment(Metric.tagged(m.generations, "outcome", "rejected")),
                Metric.increment(Metric.tagged(m.rejections, "reason", reason))
              )
            }
            case "Completed":
            case "Failed":
            case "TimedOut":
            case "Cancelled": {
              live.delete(record.id)
              const outcome = outcomes[event.to]
              finished[outcome] += 1
              const totalMs = event.at - record.enqueuedAt
              windows.total.add(event.at, totalMs)
              const updates: Array<Effect.Effect<void>> = [
                Metric.increment(Metric.tagged(m.generations, "outcome", outcome)),
                Metric.update(m.requestDuration, totalMs / 1000)
              ]
              if (event.from === "Queued") updates.push(observeQueueWait(event.at, totalMs))
              if (event.to === "TimedOut") {
                const stage = record.timeoutStage === undefined ? "total" : timeoutStages[record.timeoutStage]
                updates.push(Metric.increment(Metric.tagged(m.timeouts, "stage", stage)))
              }
              if (event.to === "Cancelled") {
                updates.push(Metric.increment(Metric.tagged(m.cancellations, "reason", record.cancelReason ?? "client")))
              }
              return Effect.all(updates, { discard: true })
            }
          }
        }
      }
    }

    // Subscribed before the service is built, so no event published after that is missed.
    const subscription = yield* PubSub.subscribe(scheduler.events)
    let busy = false
    yield* Queue.takeBetween(subscription, 1, 1024).pipe(
      Effect.flatMap((batch) => {
        busy = true
        return Effect.forEach(batch, handle, { discard: true })
      }),
      Effect.ensuring(Effect.sync(() => {
        busy = false
      })),
      Effect.forever,
      Effect.forkScoped
    )

    /** Waits (a bounded number of yields) until every event published so far is counted. */
    const drained = Effect.gen(function*() {
      for (let attempt = 0; attempt < 1000; attempt++) {
        if (!busy && (yield* Queue.size(subscription)) === 0) return
        yield* Effect.yieldNow()
      }
    })

    /** Pool counters are cumulative in the pool; the metric counters move by what changed since the last look. */
    let lastCache: PrefixCacheStats = { lookups: 0, hits: 0, hitTokens: 0, evictions: 0, evictedTokens: 0 }

    /** Brings every metric up to date: pending events, then gauges and cache counters from the scheduler's stats. */
    const sample = Effect.fn("SchedulerMetrics.sample")(function*() {
      yield* drained
      const stats = yield* scheduler.stats
      const capacity = stats.slots.total * info.contextSize
      const cache = stats.slots.cache
      const previous = lastCache
      lastCache = cache
      yield* Effect.all(
        [
          Metric.set(gauge.requestsRunning, stats.running),
          Metric.set(gauge.requestsQueued, stats.queued),
          Metric.set(gauge.queueLimit, stats.queueLimit),
          Metric.set(gauge.slotsTotal, stats.slots.total),
          Metric.set(gauge.slotsFree, stats.slots.free),
          Metric.set(gauge.kvCacheTokens, stats.slots.kvTokens),
          Metric.set(gauge.kvCacheCachedTokens, stats.slots.cachedTokens),
          Metric.set(gauge.kvCacheBytes, stats.slots.kvBytes),
          Metric.set(gauge.kvCacheUsageRatio, capacity === 0 ? 0 : stats.slots.kvTokens / capacity),
          ...(Object.keys(cacheCounters) as Array<keyof PrefixCacheStats>).map((key) =>
            Metric.incrementBy(cacheCounters[key], Math.max(0, cache[key] - previous[key]))
          )
        ],
        { discard: true }
      )
      return stats
    })

    /** The dashboard view: percentiles over the last five minutes, rates over the last ten seconds, state now. */
    const adminStats = Effect.fn("SchedulerMetrics.adminStats")(function*() {
      const stats = yield* sample()
      const now = yield* Clock.currentTimeMillis
      const capacity = stats.slots.total * info.contextSize
      const cache = stats.slots.cache
      return {
        model,
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
          finished: { ...finished }
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
          tokenHitRate: ratio(cache.hitTokens, promptTokensStarted)
        }
      } satisfies AdminStats
    })

    return { model, sample, adminStats, drained } as const
  })
}) {}
