import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Fiber, TestClock } from "effect"
import { simEmbeddingSize } from "../../src/engine/SimBackend.js"
import { QueueFull, ShuttingDown, StageTimedOut } from "../../src/scheduler/SchedulerErrors.js"
import { RequestScheduler } from "../../src/scheduler/RequestScheduler.js"
import { simEngine, simRequest } from "../support/simEngine.js"
import { collect } from "../support/simEngine.js"

/** Embedding one token takes 10 ms of `TestClock` time on this engine. */
const engine = (settings: Parameters<typeof simEngine>[1] = {}) => simEngine({ prefillLatencyPerToken: 10 }, settings)

const dot = (a: Float32Array, b: Float32Array) => a.reduce((sum, value, index) => sum + value * b[index]!, 0)

describe("embeddings through the scheduler", () => {
  it.effect("are unit vectors, the same for the same tokens and different for different ones", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const fiber = yield* Effect.fork(scheduler.embed([[1, 2, 3], [4, 5], [1, 2, 3]]))
      yield* TestClock.adjust(1000)
      const [a, b, c] = yield* Fiber.join(fiber)
      expect(a).toHaveLength(simEmbeddingSize)
      expect(dot(a!, a!)).toBeCloseTo(1, 5)
      expect(Array.from(c!)).toEqual(Array.from(a!))
      expect(Array.from(b!)).not.toEqual(Array.from(a!))
    }).pipe(Effect.provide(engine())))

  it.effect("run one at a time in arrival order; beyond maxQueue waiting, QueueFull at once", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const finished: Array<string> = []
      const run = (name: string) => Effect.tap(scheduler.embed([[1, 2, 3]]), () => Effect.sync(() => finished.push(name)))
      const fibers = yield* Effect.forEach(["a", "b", "c"], (name) => Effect.fork(run(name)))
      yield* TestClock.adjust(1)
      const refused = yield* Effect.either(scheduler.embed([[1]]))
      expect(Either.isLeft(refused) && refused.left).toBeInstanceOf(QueueFull)
      expect(Either.isLeft(refused) && refused.left).toMatchObject({ queued: 2, limit: 2 })
      yield* TestClock.adjust(1000)
      yield* Effect.forEach(fibers, Fiber.join)
      expect(finished).toEqual(["a", "b", "c"])
      // Room again once they are done.
      const again = yield* Effect.fork(scheduler.embed([[1]]))
      yield* TestClock.adjust(100)
      expect(yield* Fiber.join(again)).toHaveLength(1)
    }).pipe(Effect.provide(engine({ scheduler: { maxQueue: 2 } }))))

  it.effect("wait at most the queue timeout (408's StageTimedOut queue) and run within the total timeout", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      const long = yield* Effect.fork(scheduler.embed([Array.from({ length: 50 }, () => 1)]))
      yield* TestClock.adjust(1)
      const waiting = yield* Effect.fork(Effect.either(scheduler.embed([[1]], { queueMs: 100 })))
      yield* TestClock.adjust(200)
      const timedOut = yield* Fiber.join(waiting)
      expect(Either.isLeft(timedOut) && timedOut.left).toEqual(new StageTimedOut({ stage: "queue", limitMs: 100 }))
      yield* TestClock.adjust(1000)
      yield* Fiber.join(long)
      const tooSlow = yield* Effect.fork(Effect.either(scheduler.embed([[1, 2, 3], [4, 5, 6]], { totalMs: 35 })))
      yield* TestClock.adjust(1000)
      const total = yield* Fiber.join(tooSlow)
      expect(Either.isLeft(total) && total.left).toEqual(new StageTimedOut({ stage: "total", limitMs: 35 }))
    }).pipe(Effect.provide(engine())))

  it.effect("are refused while the scheduler drains, and do not take a generation slot", () =>
    Effect.gen(function*() {
      const scheduler = yield* RequestScheduler
      // The engine's one slot is busy generating; an embedding still runs.
      const generating = yield* Effect.fork(collect(scheduler.submit(simRequest("g", { maxTokens: 50 }))))
      yield* TestClock.adjust(1)
      const embedded = yield* Effect.fork(scheduler.embed([[1]]))
      yield* TestClock.adjust(20)
      expect(yield* Fiber.join(embedded)).toHaveLength(1)
      yield* TestClock.adjust(1000)
      yield* Fiber.join(generating)
      yield* scheduler.shutdown(0)
      const refused = yield* Effect.either(scheduler.embed([[1]]))
      expect(Either.isLeft(refused) && refused.left).toBeInstanceOf(ShuttingDown)
    }).pipe(Effect.provide(engine())))
})
