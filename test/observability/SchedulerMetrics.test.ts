import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Fiber, Layer, Metric, TestClock } from "effect"
import { SeqPool } from "../../src/engine/SeqPool.js"
import { encodePrometheusText } from "../../src/observability/PrometheusText.js"
import { SchedulerMetrics } from "../../src/observability/SchedulerMetrics.js"
import { weftMetricFamilies } from "../../src/observability/WeftMetrics.js"
import type { GenerationEvent, GenerationRequest } from "../../src/scheduler/GenerationRequest.js"
import { RequestScheduler } from "../../src/scheduler/RequestScheduler.js"
import { parsePrometheusText, sampleValue } from "../support/prometheusText.js"
import type { Family } from "../support/prometheusText.js"
import { collect, finishedOf as finishedOfEvents, simEngine, simRequest } from "../support/simEngine.js"

// One slot, a queue of one, 10 ms per decode step (prefill included) on TestClock: every duration below is exact.
const failingPrompt = [99, 1, 2]
const layer = SchedulerMetrics.Default.pipe(
  Layer.provideMerge(
    simEngine({ script: (prompt) => (prompt[0] === failingPrompt[0] ? { failAtToken: 2 } : {}) }, { scheduler: { maxQueue: 1 } })
  )
)

const request = (id: string, overrides: Partial<GenerationRequest> = {}): GenerationRequest =>
  simRequest(id, { maxTokens: 1000, ...overrides })

const finishedOf = (result: Either.Either<ReadonlyArray<GenerationEvent>, unknown>) => finishedOfEvents(Either.getOrThrow(result))

/** Lets other fibers run until `condition` holds (no clock time passes). */
const until = (condition: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    for (let attempt = 0; attempt < 200; attempt++) {
      if (yield* condition) return
      yield* Effect.yieldNow()
    }
    return yield* Effect.dieMessage("condition never held")
  })

/** What `/metrics` would answer now, parsed strictly. */
const scrape = Effect.gen(function*() {
  yield* Effect.flatMap(SchedulerMetrics, (metrics) => metrics.sample())
  return parsePrometheusText(encodePrometheusText(weftMetricFamilies, yield* Metric.snapshot))
})

const value = (families: Map<string, Family>, name: string, labels: Record<string, string> = {}) =>
  sampleValue(families, name, { model: "sim", ...labels }) ?? 0

describe("SchedulerMetrics", () => {
  it.effect("a scripted workload moves every counter, gauge and histogram by exactly the expected amounts", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const stats = scheduler.stats
      const before = yield* scrape

      // A completes: 5 tokens at 10 ms steps, no wait.
      const a = yield* Effect.fork(collect(scheduler.submit(request("a", { maxTokens: 5 }))))
      yield* TestClock.adjust(1000)
      expect(finishedOf(yield* Fiber.join(a)).finishReason).toBe("length")

      // B runs; C times out in the queue after 30 ms; D waits; E finds the queue full.
      const b = yield* Effect.fork(collect(scheduler.submit(request("b"))))
      yield* until(Effect.map(stats, (now) => now.running === 1))
      const c = yield* Effect.fork(collect(scheduler.submit(request("c", { timeouts: { queueMs: 30 } }))))
      yield* until(Effect.map(stats, (now) => now.queued === 1))
      yield* TestClock.adjust(30)
      expect(finishedOf(yield* Fiber.join(c)).finishReason).toBe("timeout")
      const d = yield* Effect.fork(collect(scheduler.submit(request("d"))))
      yield* until(Effect.map(stats, (now) => now.queued === 1))
      const e = yield* collect(scheduler.submit(request("e")))
      expect(Either.isLeft(e) && (e.left as { _tag: string })._tag).toBe("QueueFull")

      const busy = yield* scrape
      const busyStats = yield* stats
      expect(value(busy, "weft_requests_running")).toBe(1)
      expect(value(busy, "weft_requests_queued")).toBe(1)
      expect(value(busy, "weft_queue_limit")).toBe(1)
      expect(value(busy, "weft_slots_capacity")).toBe(1)
      expect(value(busy, "weft_slots_free")).toBe(0)
      expect(value(busy, "weft_kv_cache_tokens")).toBe(busyStats.slots.kvTokens)
      expect(value(busy, "weft_kv_cache_bytes")).toBe(busyStats.slots.kvBytes)
      expect(value(busy, "weft_kv_cache_usage_ratio")).toBeCloseTo(busyStats.slots.kvTokens / 64)

      // D's client goes away while it waits; an operator cancels B after its third token. A decode step cannot be
      // pre-empted, so B ends when its fourth step does, 40 ms after admission, without counting that token.
      yield* Fiber.interrupt(d)
      const cancelled = yield* Effect.fork(scheduler.cancel("b"))
      yield* TestClock.adjust(10)
      expect(yield* Fiber.join(cancelled)).toBe(true)
      expect(finishedOf(yield* Fiber.join(b)).cancelReason).toBe("cancel")
      yield* until(Effect.map(stats, (now) => now.slots.free === 1))

      // F's prefill outlives its 5 ms first-token limit; G's 35 ms total limit ends it after three tokens.
      const f = yield* Effect.fork(collect(scheduler.submit(request("f", { timeouts: { firstTokenMs: 5 } }))))
      yield* TestClock.adjust(10)
      expect(finishedOf(yield* Fiber.join(f)).error?._tag).toBe("StageTimedOut")
      const g = yield* Effect.fork(collect(scheduler.submit(request("g", { timeouts: { totalMs: 35 } }))))
      yield* TestClock.adjust(40)
      expect(finishedOf(yield* Fiber.join(g)).usage.completionTokens).toBe(3)

      // H's prompt does not fit; I's decode fails at its third token.
      const h = yield* collect(scheduler.submit(request("h", { prompt: Array.from({ length: 65 }, () => 1) })))
      expect(Either.isLeft(h) && (h.left as { _tag: string })._tag).toBe("PromptTooLong")
      const i = yield* Effect.fork(collect(scheduler.submit(request("i", { prompt: failingPrompt }))))
      yield* TestClock.adjust(30)
      expect(finishedOf(yield* Fiber.join(i)).finishReason).toBe("error")

      // K is cancelled by shutdown during its prefill; J is then refused.
      const k = yield* Effect.fork(collect(scheduler.submit(request("k"))))
      yield* until(Effect.map(stats, (now) => now.running === 1))
      const shutdown = yield* Effect.fork(scheduler.shutdown(0))
      yield* until(scheduler.isDraining)
      for (let step = 0; step < 10; step++) yield* Effect.yieldNow()
      yield* TestClock.adjust(10)
      yield* Fiber.join(shutdown)
      expect(finishedOf(yield* Fiber.join(k)).cancelReason).toBe("shutdown")
      const j = yield* collect(scheduler.submit(request("j")))
      expect(Either.isLeft(j) && (j.left as { _tag: string })._tag).toBe("ShuttingDown")

      const after = yield* scrape
      const delta = (name: string, labels: Record<string, string> = {}) => value(after, name, labels) - value(before, name, labels)

      expect({
        completed: delta("weft_generations_total", { outcome: "completed" }),
        failed: delta("weft_generations_total", { outcome: "failed" }),
        timedOut: delta("weft_generations_total", { outcome: "timed_out" }),
        cancelled: delta("weft_generations_total", { outcome: "cancelled" }),
        rejected: delta("weft_generations_total", { outcome: "rejected" })
      }).toEqual({ completed: 1, failed: 1, timedOut: 3, cancelled: 3, rejected: 3 })
      expect({
        queueFull: delta("weft_rejections_total", { reason: "queue_full" }),
        promptTooLong: delta("weft_rejections_total", { reason: "prompt_too_long" }),
        shuttingDown: delta("weft_rejections_total", { reason: "shutting_down" }),
        promptEmpty: delta("weft_rejections_total", { reason: "prompt_empty" })
      }).toEqual({ queueFull: 1, promptTooLong: 1, shuttingDown: 1, promptEmpty: 0 })
      expect({
        queue: delta("weft_timeouts_total", { stage: "queue" }),
        firstToken: delta("weft_timeouts_total", { stage: "first_token" }),
        total: delta("weft_timeouts_total", { stage: "total" })
      }).toEqual({ queue: 1, firstToken: 1, total: 1 })
      expect({
        client: delta("weft_cancellations_total", { reason: "client" }),
        cancel: delta("weft_cancellations_total", { reason: "cancel" }),
        shutdown: delta("weft_cancellations_total", { reason: "shutdown" })
      }).toEqual({ client: 1, cancel: 1, shutdown: 1 })

      // Six requests got a slot (A B F G I K), three prompt tokens each; A 5 + B 3 + G 3 + I 2 tokens generated.
      expect(delta("weft_prompt_tokens_total", { tenant: "" })).toBe(18)
      expect(delta("weft_generation_tokens_total", { tenant: "" })).toBe(13)

      // Queue wait: 0 for the six that got a slot at once and for D, 30 ms for C.
      expect(delta("weft_queue_wait_seconds_count")).toBe(8)
      expect(delta("weft_queue_wait_seconds_sum")).toBeCloseTo(0.03, 9)
      expect(delta("weft_queue_wait_seconds_bucket", { le: "0.001" })).toBe(7)
      expect(delta("weft_queue_wait_seconds_bucket", { le: "0.025" })).toBe(7)
      expect(delta("weft_queue_wait_seconds_bucket", { le: "0.05" })).toBe(8)
      // First token 10 ms after admission for A, B, G and I (F and K never got one).
      expect(delta("weft_time_to_first_token_seconds_count")).toBe(4)
      expect(delta("weft_time_to_first_token_seconds_sum")).toBeCloseTo(0.04, 9)
      expect(delta("weft_time_to_first_token_seconds_bucket", { le: "0.01" })).toBe(4)
      // 10 ms between tokens: A 4 gaps, B 2, G 2, I 1.
      expect(delta("weft_inter_token_latency_seconds_count")).toBe(9)
      expect(delta("weft_inter_token_latency_seconds_sum")).toBeCloseTo(0.09, 9)
      expect(delta("weft_inter_token_latency_seconds_bucket", { le: "0.005" })).toBe(0)
      expect(delta("weft_inter_token_latency_seconds_bucket", { le: "0.01" })).toBe(9)
      // Admission to end of the eight admitted: A 50, B 40, C 30, D 0, F 10, G 40, I 30, K 10 ms.
      expect(delta("weft_request_duration_seconds_count")).toBe(8)
      expect(delta("weft_request_duration_seconds_sum")).toBeCloseTo(0.21, 9)
      expect(delta("weft_request_duration_seconds_bucket", { le: "0.05" })).toBe(8)

      // B, F and G reused A's (then each other's) prefix [1, 2] of [1, 2, 3]; I evicted G's cached prefix.
      const pool = yield* Effect.flatMap(SeqPool, (seqPool) => seqPool.stats)
      expect(delta("weft_prefix_cache_lookups_total")).toBe(6)
      expect(delta("weft_prefix_cache_hits_total")).toBe(3)
      expect(delta("weft_prefix_cache_hit_tokens_total")).toBe(6)
      expect(delta("weft_prefix_cache_evictions_total")).toBe(1)
      expect(delta("weft_prefix_cache_evicted_tokens_total")).toBe(pool.cache.evictedTokens)
      expect(value(after, "weft_kv_cache_cached_tokens")).toBe(pool.cachedTokens)

      expect(value(after, "weft_requests_running")).toBe(0)
      expect(value(after, "weft_requests_queued")).toBe(0)
      expect(value(after, "weft_slots_free")).toBe(1)

      const admin = yield* Effect.flatMap(SchedulerMetrics, (metrics) => metrics.adminStats())
      expect(admin.requests.finished).toEqual({ completed: 1, failed: 1, timed_out: 3, cancelled: 3, rejected: 3 })
      expect(admin.latencyMs.queueWait).toEqual({ count: 8, p50: 0, p95: 30, p99: 30, max: 30 })
      expect(admin.latencyMs.timeToFirstToken).toEqual({ count: 4, p50: 10, p95: 10, p99: 10, max: 10 })
      expect(admin.latencyMs.interToken).toEqual({ count: 9, p50: 10, p95: 10, p99: 10, max: 10 })
      expect(admin.latencyMs.total).toEqual({ count: 8, p50: 30, p95: 50, p99: 50, max: 50 })
      expect(admin.prefixCache).toMatchObject({ lookups: 6, hits: 3, hitTokens: 6, evictions: 1, hitRate: 0.5 })
      expect(admin.prefixCache.tokenHitRate).toBeCloseTo(6 / 18)
      // Rates count whole seconds of the last ten: second 0 had A's 5 tokens; second 1 (B, G, I: 8) is still running.
      expect(admin.throughput.generationTokensPerSecond).toBeCloseTo(0.5)
      yield* TestClock.adjust(1000)
      const later = yield* Effect.flatMap(SchedulerMetrics, (metrics) => metrics.adminStats())
      expect(later.throughput.generationTokensPerSecond).toBeCloseTo(1.3)
      expect(later.throughput.requestsPerSecond).toBeCloseTo(1.1)
    }).pipe(Effect.provide(layer)), 20_000)
})
