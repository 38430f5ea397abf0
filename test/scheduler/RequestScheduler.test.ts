import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Fiber, Option, Stream, TestClock } from "effect"
import { identity } from "effect/Function"
import type { GenerationEvent } from "../../src/scheduler/GenerationRequest.js"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import { SeqPool } from "../../src/engine/SeqPool.js"
import type { SimBackendConfig } from "../../src/engine/SimBackend.js"
import { openedBy, RequestScheduler } from "../../src/scheduler/RequestScheduler.js"
import type { SchedulerSettings } from "../../src/scheduler/SchedulerConfig.js"
import { collect, finishedOf, simEngine, simRequest as request } from "../support/simEngine.js"

const schedulerLayer = (sim: Partial<SimBackendConfig> = {}, settings: Partial<SchedulerSettings> = {}) =>
  simEngine(sim, { scheduler: settings })

describe("RequestScheduler", () => {
  it.effect("streams deltas then one Finished with usage", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const fiber = yield* Effect.fork(collect(scheduler.submit(request("a"))))
      yield* TestClock.adjust(1000)
      const events = Either.getOrThrow(yield* Fiber.join(fiber))
      expect(events[0]!._tag).toBe("Started")
      const finished = finishedOf(events)
      expect(finished.finishReason).toBe("length")
      expect(finished.usage).toEqual({ promptTokens: 3, completionTokens: 5, cachedTokens: 0 })
      const pool = yield* SeqPool
      expect((yield* pool.stats).free).toBe(1)
    }).pipe(Effect.provide(schedulerLayer())))

  it.effect("a full context ends with length, never a shift", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const fiber = yield* Effect.fork(collect(scheduler.submit(request("a", { prompt: [1, 2, 3, 4, 5, 6], maxTokens: undefined }))))
      yield* TestClock.adjust(10_000)
      const finished = finishedOf(Either.getOrThrow(yield* Fiber.join(fiber)))
      expect(finished.finishReason).toBe("length")
      // 6 prompt cells + 9 evaluated generated tokens fill the 16-cell window; the 10th token is sampled, never evaluated.
      expect(finished.usage.completionTokens).toBe(11)
    }).pipe(Effect.provide(schedulerLayer({ contextSize: 16 }))))

  it.effect("queue full fails at once with the queue length and a retry-after estimate", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const running = yield* Effect.fork(collect(scheduler.submit(request("a", { maxTokens: 50 }))))
      const queued = yield* Effect.fork(collect(scheduler.submit(request("b"))))
      yield* TestClock.adjust(1)
      const rejected = yield* collect(scheduler.submit(request("c")))
      expect(Either.isLeft(rejected)).toBe(true)
      expect(Either.isLeft(rejected) && rejected.left).toMatchObject({ _tag: "QueueFull", queued: 1, limit: 1 })
      expect(Either.isLeft(rejected) && (rejected.left as { retryAfterSeconds: number }).retryAfterSeconds).toBeGreaterThanOrEqual(1)
      yield* TestClock.adjust(10_000)
      yield* Fiber.join(running)
      yield* Fiber.join(queued)
      const snapshot = yield* scheduler.inspect
      expect(snapshot.recent.map((record) => [record.id, record.state])).toEqual([
        ["b", "Completed"],
        ["a", "Completed"],
        ["c", "Rejected"]
      ])
    }).pipe(Effect.provide(schedulerLayer({}, { maxQueue: 1 }))))

  it.effect("each stage timeout names its stage and limit", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const slow = yield* Effect.fork(collect(scheduler.submit(request("slow", { maxTokens: 100 }))))
      const waiting = yield* Effect.fork(collect(scheduler.submit(request("q", { timeouts: { queueMs: 50 } }))))
      yield* TestClock.adjust(100)
      const queueTimeout = finishedOf(Either.getOrThrow(yield* Fiber.join(waiting)))
      expect(queueTimeout.finishReason).toBe("timeout")
      expect(queueTimeout.error).toMatchObject({ _tag: "StageTimedOut", stage: "queue", limitMs: 50 })
      expect(queueTimeout.error?.message).toBe("queue wait exceeded its limit of 50 ms")
      yield* TestClock.adjust(10_000)
      const total = finishedOf(Either.getOrThrow(yield* Fiber.join(slow)))
      expect(total.error).toMatchObject({ stage: "total", limitMs: 500 })
      expect(total.usage.completionTokens).toBeGreaterThan(0)
      expect((yield* scheduler.stats).slots.free).toBe(1)
    }).pipe(Effect.provide(schedulerLayer({}, { timeouts: { totalMs: 500 } }))))

  it.effect("a slow prefill trips the first-token timeout", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const fiber = yield* Effect.fork(collect(scheduler.submit(request("a", { prompt: Array.from({ length: 40 }, () => 5) }))))
      yield* TestClock.adjust(1000)
      const finished = finishedOf(Either.getOrThrow(yield* Fiber.join(fiber)))
      expect(finished.error).toMatchObject({ stage: "firstToken", limitMs: 20 })
    }).pipe(Effect.provide(schedulerLayer({ prefillLatencyPerToken: 1 }, { timeouts: { firstTokenMs: 20 } }))))

  it.effect("priority classes are served high first, FIFO within a class, and aging lifts a starving low", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const started: Array<string> = []
      const submit = (id: string, priority: "high" | "normal" | "low") =>
        Effect.fork(
          scheduler.submit(request(id, { priority, maxTokens: 2 })).pipe(
            Stream.tap((event) => Effect.sync(() => event._tag === "Started" && started.push(id))),
            Stream.runDrain
          )
        )
      const fibers = [yield* submit("busy", "normal")]
      yield* TestClock.adjust(1)
      fibers.push(yield* submit("low1", "low"))
      fibers.push(yield* submit("normal1", "normal"))
      fibers.push(yield* submit("high1", "high"))
      fibers.push(yield* submit("normal2", "normal"))
      fibers.push(yield* submit("high2", "high"))
      yield* TestClock.adjust(10_000)
      yield* Fiber.joinAll(fibers)
      expect(started).toEqual(["busy", "high1", "high2", "normal1", "normal2", "low1"])

      // With aging at 100 ms per class, a low request that waited 300 ms outranks a fresh high one.
      started.length = 0
      const aged = [yield* submit("busy2", "normal")]
      yield* TestClock.adjust(1)
      aged.push(yield* submit("old-low", "low"))
      yield* TestClock.adjust(300)
      aged.push(yield* submit("new-high", "high"))
      yield* TestClock.adjust(10_000)
      yield* Fiber.joinAll(aged)
      expect(started).toEqual(["busy2", "old-low", "new-high"])
    }).pipe(Effect.provide(schedulerLayer({ tokenLatency: 200 }, { agingMs: 100 }))))

  it.effect("cancel(id) ends a running request as cancelled and frees its slot", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const fiber = yield* Effect.fork(collect(scheduler.submit(request("a", { maxTokens: 100 }))))
      yield* TestClock.adjust(55)
      // Cancellation is observed between decode steps, so it completes once the current step ends.
      const cancelling = yield* Effect.fork(scheduler.cancel("a"))
      yield* TestClock.adjust(10)
      expect(yield* Fiber.join(cancelling)).toBe(true)
      expect(yield* scheduler.cancel("a")).toBe(false)
      const finished = finishedOf(Either.getOrThrow(yield* Fiber.join(fiber)))
      expect(finished.finishReason).toBe("cancelled")
      const snapshot = yield* scheduler.inspect
      expect(snapshot.recent[0]).toMatchObject({ id: "a", state: "Cancelled", cancelReason: "cancel" })
      expect((yield* scheduler.stats).slots.free).toBe(1)
    }).pipe(Effect.provide(schedulerLayer())))

  it.effect("interrupting the caller interrupts the request fiber", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const fiber = yield* Effect.fork(collect(scheduler.submit(request("a", { maxTokens: 100 }))))
      yield* TestClock.adjust(55)
      expect((yield* scheduler.stats).slots.free).toBe(0)
      const interrupting = yield* Effect.fork(Fiber.interrupt(fiber))
      yield* TestClock.adjust(10)
      yield* Fiber.join(interrupting)
      expect((yield* scheduler.stats).slots.free).toBe(1)
      const snapshot = yield* scheduler.inspect
      expect(snapshot.recent[0]).toMatchObject({ id: "a", state: "Cancelled", cancelReason: "client" })
    }).pipe(Effect.provide(schedulerLayer())))

  it.effect("inspect shows queued and running requests with ages", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      yield* Effect.fork(collect(scheduler.submit(request("a", { maxTokens: 100 }))))
      yield* TestClock.adjust(20)
      yield* Effect.fork(collect(scheduler.submit(request("b", { priority: "low" }))))
      yield* TestClock.adjust(30)
      const snapshot = yield* scheduler.inspect
      expect(snapshot.running).toEqual([{ id: "a", state: "Running", priority: "normal", slot: 0, ageMs: 50, completionTokens: 5 }])
      expect(snapshot.queued).toEqual([
        { id: "b", state: "Queued", priority: "low", slot: undefined, ageMs: 30, completionTokens: 0 }
      ])
      yield* TestClock.adjust(10_000)
    }).pipe(Effect.provide(schedulerLayer())))

  it.effect("graceful shutdown lets in-flight requests finish within the grace, then interrupts the rest", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const short = yield* Effect.fork(collect(scheduler.submit(request("short", { maxTokens: 3 }))))
      const long = yield* Effect.fork(collect(scheduler.submit(request("long", { maxTokens: 1000 }))))
      yield* TestClock.adjust(1)
      const shutdown = yield* Effect.fork(scheduler.shutdown(200))
      yield* TestClock.adjust(1)
      const refused = yield* collect(scheduler.submit(request("late")))
      expect(Either.isLeft(refused) && refused.left).toMatchObject({ _tag: "ShuttingDown" })
      yield* TestClock.adjust(300)
      yield* Fiber.join(shutdown)
      expect(finishedOf(Either.getOrThrow(yield* Fiber.join(short))).finishReason).toBe("length")
      expect(finishedOf(Either.getOrThrow(yield* Fiber.join(long))).finishReason).toBe("cancelled")
      const stats = yield* scheduler.stats
      expect(stats.slots.free).toBe(2)
      expect(stats.slots.runningTokens).toBe(0)
      expect((yield* scheduler.inspect).recent[0]).toMatchObject({ id: "long", cancelReason: "shutdown" })
    }).pipe(Effect.provide(schedulerLayer({ parallel: 2 }))))

  it.effect("a fresh random seed is drawn per request when none is given", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const seeds: Array<number> = []
      for (const id of ["a", "b", "c"]) {
        const fiber = yield* Effect.fork(
          scheduler.submit(request(id, { sampling: defaultSampling, maxTokens: 1 })).pipe(
            Stream.tap((event) => Effect.sync(() => event._tag === "Started" && seeds.push(event.seed))),
            Stream.runDrain
          )
        )
        yield* TestClock.adjust(100)
        yield* Fiber.join(fiber)
      }
      expect(new Set(seeds).size).toBe(3)
    }).pipe(Effect.provide(schedulerLayer())))

  it.effect("a prompt token outside the vocabulary is rejected before it can fail a shared batch", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const rejected = yield* collect(scheduler.submit(request("bad", { prompt: [1, 99_999] })))
      expect(Either.isLeft(rejected) && rejected.left).toMatchObject({ _tag: "PromptTokenInvalid", token: 99_999 })
      expect((yield* scheduler.inspect).recent[0]).toMatchObject({ id: "bad", state: "Rejected" })
    }).pipe(Effect.provide(schedulerLayer())))

  it.effect("openedBy: submit's own stream opens as its mailbox, with the same events, and closing the scope early cancels it", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      // Only the scheduler's own stream: a wrapper (an adapter's lease, a stage) must run as a stream.
      expect(Option.isNone(openedBy(Stream.map(scheduler.submit(request("w")), identity)))).toBe(true)
      const opened = openedBy(scheduler.submit(request("a")))
      expect(Option.isSome(opened)).toBe(true)
      const reading = yield* Effect.fork(Effect.scoped(Effect.gen(function*() {
        const mailbox = yield* Option.getOrThrow(opened)
        const events: Array<GenerationEvent> = []
        while (true) {
          const [chunk, done] = yield* mailbox.takeAll
          events.push(...chunk)
          if (done) return events
        }
      })))
      yield* TestClock.adjust(1000)
      const events = yield* Fiber.join(reading)
      const streamed = yield* Effect.fork(collect(scheduler.submit(request("s"))))
      yield* TestClock.adjust(1000)
      // The second run reuses the first's cached prefix, so `Started` and the usage differ in their cached tokens only.
      const strip = (all: ReadonlyArray<GenerationEvent>) =>
        all.map((event) => (event._tag === "Delta" ? event : event._tag === "Finished" ? [event.finishReason, event.usage.completionTokens] : event._tag))
      expect(strip(events)).toEqual(strip(Either.getOrThrow(yield* Fiber.join(streamed))))
      expect(finishedOf(events).usage).toEqual({ promptTokens: 3, completionTokens: 5, cachedTokens: 0 })

      const early = yield* Effect.fork(Effect.scoped(Effect.gen(function*() {
        const mailbox = yield* Option.getOrThrow(openedBy(scheduler.submit(request("b", { maxTokens: 100 }))))
        yield* mailbox.take
      })))
      yield* TestClock.adjust(55)
      yield* Fiber.join(early)
      yield* TestClock.adjust(100)
      const snapshot = yield* scheduler.inspect
      expect(snapshot.recent[0]).toMatchObject({ id: "b", state: "Cancelled", cancelReason: "client" })
      expect((yield* scheduler.stats).slots.free).toBe(1)
    }).pipe(Effect.provide(schedulerLayer())))
})
