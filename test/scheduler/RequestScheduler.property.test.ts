import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Either, FastCheck as fc, Fiber, Layer, PubSub, Queue, Stream, TestClock } from "effect"
import { Backend } from "../../src/engine/Backend.js"
import type { BackendShape } from "../../src/engine/Backend.js"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import { SeqPool } from "../../src/engine/SeqPool.js"
import { makeSimBackend } from "../../src/engine/SimBackend.js"
import type { SimScript } from "../../src/engine/SimBackend.js"
import type { GenerationEvent, Priority } from "../../src/scheduler/GenerationRequest.js"
import { RequestScheduler } from "../../src/scheduler/RequestScheduler.js"
import type { SchedulerEvent } from "../../src/scheduler/RequestScheduler.js"
import { assertInLanes } from "../support/propertyLanes.js"
import { engineOn } from "../support/simEngine.js"

interface PlannedRequest {
  readonly arrivalMs: number
  /** Prefix-cache isolation key: requests of different tenants never reuse each other's cells. */
  readonly tenant: "t0" | "t1"
  readonly priority: Priority
  readonly promptLength: number
  readonly maxTokens: number | undefined
  readonly stop: ReadonlyArray<string>
  readonly script: SimScript
  readonly timeouts: { queueMs?: number; firstTokenMs?: number; totalMs?: number }
  /** Cancel through `cancel(id)` this long after arrival. */
  readonly cancelAfterMs: number | undefined
  /** Interrupt the consuming fiber (a client going away) this long after arrival. */
  readonly interruptAfterMs: number | undefined
}

interface Workload {
  readonly cache: { readonly enabled: boolean; readonly maxCachedTokens: number | undefined }
  /** Leading prompt tokens every request shares, so prefixes are worth reusing. */
  readonly sharedPrefix: number
  readonly parallel: number
  readonly maxQueue: number
  readonly contextSize: number
  readonly requests: ReadonlyArray<PlannedRequest>
}

const optional = <A>(arb: fc.Arbitrary<A>) => fc.option(arb, { nil: undefined, freq: 3 })

const plannedRequest: fc.Arbitrary<PlannedRequest> = fc.record({
  arrivalMs: fc.integer({ min: 0, max: 300 }),
  tenant: fc.constantFrom<"t0" | "t1">("t0", "t1"),
  priority: fc.constantFrom<Priority>("high", "normal", "low"),
  promptLength: fc.integer({ min: 1, max: 24 }),
  maxTokens: optional(fc.integer({ min: 0, max: 40 })),
  stop: fc.constantFrom<ReadonlyArray<string>>([], ["wö"], ["日本", "✓ to"], ["🙂"]),
  script: fc.record({
    eosAt: optional(fc.integer({ min: 0, max: 30 })),
    failAtPrefill: fc.integer({ min: 0, max: 8 }).map((n) => n === 0),
    failAtToken: optional(fc.integer({ min: 1, max: 30 })),
    failEraseTimes: fc.integer({ min: 0, max: 2 })
  }),
  timeouts: fc.record(
    {
      queueMs: fc.integer({ min: 1, max: 400 }),
      firstTokenMs: fc.integer({ min: 1, max: 60 }),
      totalMs: fc.integer({ min: 1, max: 500 })
    },
    { requiredKeys: [] }
  ),
  cancelAfterMs: optional(fc.integer({ min: 0, max: 300 })),
  interruptAfterMs: optional(fc.integer({ min: 0, max: 300 }))
})

const workload: fc.Arbitrary<Workload> = fc.record({
  cache: fc.record({ enabled: fc.boolean(), maxCachedTokens: optional(fc.integer({ min: 0, max: 80 })) }),
  sharedPrefix: fc.integer({ min: 0, max: 12 }),
  parallel: fc.integer({ min: 1, max: 4 }),
  maxQueue: fc.integer({ min: 0, max: 6 }),
  contextSize: fc.integer({ min: 40, max: 72 }),
  requests: fc.array(plannedRequest, { minLength: 1, maxLength: 14 })
})

/** The request a prompt belongs to: its marker token follows the shared prefix (letters) every prompt starts with. */
const markerBase = 200
const requestIndexOf = (prompt: ReadonlyArray<number>) => prompt.find((token) => token >= markerBase)! - markerBase

const promptOf = (plan: Workload, index: number): Array<number> => [
  ...Array.from({ length: plan.sharedPrefix }, (_, i) => 97 + (i % 26)),
  markerBase + index,
  ...Array.from({ length: plan.requests[index]!.promptLength - 1 }, (_, i) => 97 + ((i * 7) % 26))
]

/**
 * Wraps a backend to catch a generation starting on a slot that is busy, or whose kept cells are not exactly a prefix
 * of the request's own prompt, or were left by another tenant.
 */
const watchSlots = (backend: BackendShape, plan: Workload, violations: Array<string>, active: Array<boolean>): BackendShape => {
  const lastTenant: Array<string | undefined> = []
  return {
    ...backend,
    start: (slot, prompt, sampling) =>
      Effect.gen(function*() {
        if (active[slot]) violations.push(`slot ${slot} started while another generation is live on it`)
        const kept = backend.tokensOf(slot)
        const index = requestIndexOf([...kept, ...prompt])
        const expected = promptOf(plan, index)
        if (JSON.stringify([...kept, ...prompt]) !== JSON.stringify(expected)) {
          violations.push(`slot ${slot}: kept cells ${JSON.stringify(kept)} are not a prefix of request ${index}'s prompt`)
        }
        const tenant = plan.requests[index]!.tenant
        if (kept.length > 0 && lastTenant[slot] !== tenant) violations.push(`slot ${slot}: ${tenant} reused ${lastTenant[slot]}'s cells`)
        if (!plan.cache.enabled && kept.length > 0) violations.push(`slot ${slot} kept cells with the cache off`)
        lastTenant[slot] = tenant
        active[slot] = true
        yield* Effect.addFinalizer(() => Effect.sync(() => (active[slot] = false)))
        return yield* backend.start(slot, prompt, sampling)
      })
  }
}

const tokenLatencyMs = 5

/** Terminal states seen over all runs, so the property is known to exercise every ending. */
const endingsSeen = new Map<string, number>()
let cacheHitsSeen = 0

const runWorkload = (plan: Workload) => {
  const violations: Array<string> = []
  const active = Array.from({ length: plan.parallel }, () => false)
  const scripts = new Map<number, SimScript>()
  plan.requests.forEach((request, index) => scripts.set(index, request.script))
  const sim = makeSimBackend({
    parallel: plan.parallel,
    contextSize: plan.contextSize,
    tokenLatency: tokenLatencyMs,
    prefillLatencyPerToken: 1,
    script: (prompt) => scripts.get(requestIndexOf(prompt)) ?? {}
  })
  const backendLayer = Layer.succeed(Backend, watchSlots(sim, plan, violations, active))
  const layer = engineOn(backendLayer, { cache: plan.cache, scheduler: { maxQueue: plan.maxQueue, agingMs: 1_000_000 } })

  return Effect.gen(function*() {
    const scheduler = yield* RequestScheduler
    const pool = yield* SeqPool
    const observed = yield* PubSub.subscribe(scheduler.events)
    const sideFibers: Array<Fiber.RuntimeFiber<unknown, unknown>> = []
    const consumers = yield* Effect.forEach(plan.requests, (request, index) => {
      const id = `r${index}`
      const prompt = promptOf(plan, index)
      const consume = scheduler
        .submit({
          id,
          prompt,
          sampling: { ...defaultSampling, seed: index },
          maxTokens: request.maxTokens,
          stop: request.stop,
          priority: request.priority,
          timeouts: request.timeouts,
          cacheKey: request.tenant
        })
        .pipe(Stream.runCollect, Effect.map(Chunk.toReadonlyArray), Effect.either)
      return Effect.gen(function*() {
        const fiber = yield* Effect.fork(Effect.zipRight(Effect.sleep(request.arrivalMs), consume))
        if (request.cancelAfterMs !== undefined) {
          sideFibers.push(
            yield* Effect.fork(Effect.zipRight(Effect.sleep(request.arrivalMs + request.cancelAfterMs), scheduler.cancel(id)))
          )
        }
        if (request.interruptAfterMs !== undefined) {
          sideFibers.push(
            yield* Effect.fork(Effect.zipRight(Effect.sleep(request.arrivalMs + request.interruptAfterMs), Fiber.interrupt(fiber)))
          )
        }
        return fiber
      })
    })

    const allDone = () => [...consumers, ...sideFibers].every((fiber) => fiber.unsafePoll() !== null)
    // Jump from one scheduled wake-up to the next: nothing changes in between.
    for (let tick = 0; tick < 20_000 && !allDone(); tick++) {
      const now = yield* TestClock.currentTimeMillis
      const wakeUps = Chunk.toReadonlyArray(yield* TestClock.sleeps())
      const next = wakeUps.length === 0 ? now + 1 : Math.min(...wakeUps.map(Number))
      yield* TestClock.adjust(Math.max(1, next - now))
      const stats = yield* scheduler.stats
      if (stats.running > plan.parallel) violations.push(`running ${stats.running} > ${plan.parallel}`)
      if (stats.queued > plan.maxQueue + stats.slots.free) {
        violations.push(`queued ${stats.queued} > limit ${plan.maxQueue} + ${stats.slots.free} free slots`)
      }
      if (active.filter(Boolean).length > plan.parallel) violations.push("more live generations than slots")
      const backendCells = Array.from({ length: plan.parallel }, (_, slot) => sim.cells(slot)).reduce((a, b) => a + b, 0)
      if (stats.slots.runningTokens + stats.slots.cachedTokens !== backendCells) {
        violations.push(`running ${stats.slots.runningTokens} + cached ${stats.slots.cachedTokens} != backend ${backendCells}`)
      }
      for (const holder of stats.slots.holders) {
        if (holder.cells !== sim.cells(holder.slot)) {
          violations.push(`slot ${holder.slot}: accounted ${holder.cells} cells, backend holds ${sim.cells(holder.slot)}`)
        }
      }
    }
    expect(allDone()).toBe(true)
    const results = yield* Effect.forEach(consumers, (fiber) => Fiber.await(fiber))
    const events: Array<SchedulerEvent> = Chunk.toArray(yield* Queue.takeAll(observed))

    // Quiescence: every slot free, no KV held anywhere.
    const stats = yield* pool.stats
    expect(stats.free).toBe(plan.parallel)
    expect(stats.runningTokens).toBe(0)
    expect(stats.holders).toEqual([])
    const backendCells = Array.from({ length: plan.parallel }, (_, slot) => sim.cells(slot)).reduce((a, b) => a + b, 0)
    expect(stats.cachedTokens).toBe(backendCells)
    if (!plan.cache.enabled) expect(backendCells).toBe(0)
    if (plan.cache.maxCachedTokens !== undefined) expect(stats.cachedTokens).toBeLessThanOrEqual(0.8 * plan.cache.maxCachedTokens)
    if (stats.cache.hits > 0) cacheHitsSeen++
    expect(violations).toEqual([])

    // Exactly one terminal state per request; rejected ones never ran.
    const transitions = events.flatMap((event) => (event._tag === "Transition" ? [event] : []))
    plan.requests.forEach((request, index) => {
      const id = `r${index}`
      const mine = transitions.filter((event) => event.record.id === id)
      const terminal = mine.filter((event) => !["Queued", "Running"].includes(event.to))
      const exit = results[index]!
      const interruptedBeforeSubmit = mine.length === 0
      if (interruptedBeforeSubmit) {
        expect(request.interruptAfterMs).toBeDefined()
        return
      }
      expect(terminal.length).toBe(1)
      const ending = terminal[0]!.to === "Cancelled" ? `Cancelled:${terminal[0]!.record.cancelReason}` : terminal[0]!.to
      endingsSeen.set(ending, (endingsSeen.get(ending) ?? 0) + 1)
      if (terminal[0]!.to === "Rejected") {
        expect(mine.length).toBe(1)
        expect(terminal[0]!.record.slot).toBeUndefined()
      }
      // A consumer that saw its stream to the end got exactly one Finished event, last.
      if (exit._tag === "Success" && Either.isRight(exit.value)) {
        const streamed: ReadonlyArray<GenerationEvent> = exit.value.right
        const finished = streamed.filter((event) => event._tag === "Finished")
        expect(finished.length).toBe(1)
        expect(streamed[streamed.length - 1]!._tag).toBe("Finished")
        const deltaTokens = streamed.reduce((sum, event) => sum + (event._tag === "Delta" ? event.tokens : 0), 0)
        const final = finished[0]!
        expect(deltaTokens).toBeLessThanOrEqual(final.usage.completionTokens)
        if (request.maxTokens !== undefined) expect(final.usage.completionTokens).toBeLessThanOrEqual(request.maxTokens)
        const text = streamed.map((event) => (event._tag === "Delta" ? event.text : "")).join("")
        for (const stop of request.stop) expect(text.includes(stop)).toBe(false)
        expect(text.includes("\uFFFD")).toBe(false)
      }
    })

    // FIFO within a priority class (aging is off here): among requests that started, start order follows enqueue order.
    const enqueueOrder = transitions.filter((event) => event.to === "Queued").map((event) => event.record.id)
    const startOrder = transitions.filter((event) => event.to === "Running").map((event) => event.record.id)
    for (const priority of ["high", "normal", "low"] as const) {
      const started = startOrder.filter((id) => plan.requests[Number(id.slice(1))]!.priority === priority)
      const enqueuedAndStarted = enqueueOrder.filter((id) => started.includes(id))
      expect(started).toEqual(enqueuedAndStarted)
    }
  }).pipe(Effect.scoped, Effect.provide(layer))
}

describe("RequestScheduler properties (SimBackend, TestClock)", () => {
  it.live("random workloads keep every invariant", () =>
    // A run is about two thirds idle in TestClock.adjust: four at once.
    Effect.promise(() => assertInLanes(workload, runWorkload, { numRuns: 100, lanes: 4 })).pipe(
      Effect.tap(() =>
        Effect.sync(() => {
          for (const ending of ["Completed", "Failed", "TimedOut", "Rejected", "Cancelled:cancel", "Cancelled:client"]) {
            expect(endingsSeen.get(ending) ?? 0, ending).toBeGreaterThan(0)
          }
          expect(cacheHitsSeen).toBeGreaterThan(0)
        })
      )
    ))
})
