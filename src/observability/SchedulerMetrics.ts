import { Clock, Effect, Metric, MetricLabel, PubSub, Queue } from "effect"
import type { PrefixCacheStats } from "../engine/SeqPool.js"
import type { SchedulerEvent } from "../scheduler/RequestScheduler.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import { outcomeLabels } from "../scheduler/RequestLifecycle.js"
import type { RequestRecord } from "../scheduler/RequestLifecycle.js"
import type { OutcomeLabel } from "../scheduler/RequestLifecycle.js"
import type { AdmissionRejected } from "../scheduler/SchedulerErrors.js"
import { adminStatsOf, makeStatsRates, makeStatsWindows } from "./AdminStats.js"
import { WeftMetrics } from "./WeftMetrics.js"

export type { AdminStats } from "./AdminStats.js"

/** The `reason` label of each admission error. */
const rejectionReasons = {
  QueueFull: "queue_full",
  ShuttingDown: "shutting_down",
  PromptTooLong: "prompt_too_long",
  PromptEmpty: "prompt_empty",
  PromptTokenInvalid: "prompt_token_invalid"
} as const satisfies Record<AdmissionRejected["_tag"], string>

/** The `tenant` label of a request: the HTTP layer annotates authenticated requests with it; empty without a key. */
const tenantOf = (record: RequestRecord): string => {
  const tenant = record.annotations?.["tenant"]
  return typeof tenant === "string" ? tenant : ""
}

const timeoutStages = { queue: "queue", firstToken: "first_token", total: "total" } as const
const cancelReasons = ["client", "cancel", "shutdown"] as const

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

    // Labelled once per tenant: a metric tagged twice (model, then tenant) builds a new label set, and looks its series
    // up again, on every update; the token counter is updated on every generated token.
    const perTenant = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) => {
      const byTenant = new Map<string, Metric.Metric<Type, In, Out>>()
      return (tenant: string) => {
        let labelled = byTenant.get(tenant)
        if (labelled === undefined) {
          labelled = Metric.taggedWithLabels(metric, [MetricLabel.make("model", model), MetricLabel.make("tenant", tenant)])
          byTenant.set(tenant, labelled)
        }
        return labelled
      }
    }
    const promptTokensOf = perTenant(WeftMetrics.promptTokens)
    const generationTokensOf = perTenant(WeftMetrics.generationTokens)

    // Every label value known up front starts at zero, so rates and alerts see the series before its first event.
    yield* Effect.all(
      [
        ...Object.values(outcomeLabels).map((outcome) => Metric.incrementBy(Metric.tagged(m.generations, "outcome", outcome), 0)),
        ...Object.values(rejectionReasons).map((reason) => Metric.incrementBy(Metric.tagged(m.rejections, "reason", reason), 0)),
        ...Object.values(timeoutStages).map((stage) => Metric.incrementBy(Metric.tagged(m.timeouts, "stage", stage), 0)),
        ...cancelReasons.map((reason) => Metric.incrementBy(Metric.tagged(m.cancellations, "reason", reason), 0)),
        ...Object.values(cacheCounters).map((counter) => Metric.incrementBy(counter, 0)),
        Metric.incrementBy(promptTokensOf(""), 0),
        Metric.incrementBy(generationTokensOf(""), 0)
      ],
      { discard: true }
    )

    const windows = makeStatsWindows()
    const rates = makeStatsRates()
    const finished: Record<OutcomeLabel, number> = { completed: 0, failed: 0, timed_out: 0, cancelled: 0, rejected: 0 }
    let promptTokensStarted = 0
    /** Admission time of each live request. */
    const live = new Map<string, { readonly enqueuedAt: number }>()
    /** When each running request's latest token came, from the token observer; gone once the request ends. */
    const lastTokenAt = new Map<string, number>()

    const observeQueueWait = (at: number, ms: number) => {
      windows.queueWait.add(at, ms)
      m.queueWait.unsafeUpdate(ms / 1000, [])
    }

    // Synchronous, with the metrics' unsafe updates: it runs for every event of every request, where an effect per
    // metric cost each request about a hundred Effect steps.
    const handle = (event: SchedulerEvent): void => {
      switch (event._tag) {
        case "FirstToken": {
          const request = live.get(event.requestId)
          if (request === undefined) return
          const ms = event.at - request.enqueuedAt
          windows.timeToFirstToken.add(event.at, ms)
          m.timeToFirstToken.unsafeUpdate(ms / 1000, [])
          return
        }
        case "Transition": {
          const { record } = event
          switch (event.to) {
            case "Queued":
              live.set(record.id, { enqueuedAt: record.enqueuedAt })
              rates.requests.add(event.at, 1)
              return
            case "Running":
              promptTokensStarted += record.promptTokens
              rates.promptTokens.add(event.at, record.promptTokens)
              observeQueueWait(event.at, event.at - record.enqueuedAt)
              promptTokensOf(tenantOf(record)).unsafeUpdate(record.promptTokens, [])
              return
            case "Rejected": {
              finished.rejected += 1
              rates.requests.add(event.at, 1)
              const reason = record.rejection === undefined ? "other" : rejectionReasons[record.rejection._tag]
              Metric.tagged(m.generations, "outcome", "rejected").unsafeUpdate(1, [])
              Metric.tagged(m.rejections, "reason", reason).unsafeUpdate(1, [])
              return
            }
            case "Completed":
            case "Failed":
            case "TimedOut":
            case "Cancelled": {
              live.delete(record.id)
              lastTokenAt.delete(record.id)
              const outcome = outcomeLabels[event.to]
              finished[outcome] += 1
              const totalMs = event.at - record.enqueuedAt
              windows.total.add(event.at, totalMs)
              Metric.tagged(m.generations, "outcome", outcome).unsafeUpdate(1, [])
              m.requestDuration.unsafeUpdate(totalMs / 1000, [])
              if (event.from === "Queued") observeQueueWait(event.at, totalMs)
              if (event.to === "TimedOut") {
                const stage = record.timeoutStage === undefined ? "total" : timeoutStages[record.timeoutStage]
                Metric.tagged(m.timeouts, "stage", stage).unsafeUpdate(1, [])
              }
              if (event.to === "Cancelled") {
                Metric.tagged(m.cancellations, "reason", record.cancelReason ?? "client").unsafeUpdate(1, [])
              }
              return
            }
          }
        }
      }
    }

    yield* scheduler.observeTokens(({ at, record }) => {
      rates.generationTokens.add(at, 1)
      generationTokensOf(tenantOf(record)).unsafeUpdate(1, [])
      const previous = lastTokenAt.get(record.id)
      lastTokenAt.set(record.id, at)
      if (previous === undefined) return
      windows.interToken.add(at, at - previous)
      m.interTokenLatency.unsafeUpdate((at - previous) / 1000, [])
    })

    // Subscribed before the service is built, so no event published after that is missed.
    const subscription = yield* PubSub.subscribe(scheduler.events)
    yield* Queue.takeBetween(subscription, 1, 1024).pipe(
      Effect.map((batch) => {
        for (const event of batch) handle(event)
      }),
      Effect.forever,
      Effect.forkScoped
    )

    /** Waits (a bounded number of yields) until every event published so far is counted. */
    const drained = Effect.gen(function*() {
      for (let attempt = 0; attempt < 1000; attempt++) {
        if ((yield* Queue.size(subscription)) === 0) return
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
      return adminStatsOf({ model, contextSize: info.contextSize, now, stats, windows, rates, finished, promptTokensStarted })
    })

    return { model, sample, adminStats, drained } as const
  })
}) {}
