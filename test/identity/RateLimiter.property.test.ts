import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, FastCheck, Ref, TestClock } from "effect"
import type { UsageLimits } from "../../src/identity/Principal.js"
import { formatReset, RateLimiter, windowMs } from "../../src/identity/RateLimiter.js"
import { testPrincipal } from "../support/principals.js"
import { assertInLanes } from "../support/propertyLanes.js"

const limitsArb: FastCheck.Arbitrary<UsageLimits> = FastCheck.record({
  rpm: FastCheck.option(FastCheck.integer({ min: 1, max: 6 }), { nil: undefined }),
  tpm: FastCheck.option(FastCheck.integer({ min: 50, max: 400 }), { nil: undefined }),
  maxConcurrent: FastCheck.option(FastCheck.integer({ min: 1, max: 3 }), { nil: undefined })
})

const principal = testPrincipal

const operationArb = FastCheck.record({
  key: FastCheck.integer({ min: 0, max: 1 }),
  delayMs: FastCheck.integer({ min: 0, max: 40_000 }),
  holdMs: FastCheck.integer({ min: 0, max: 90_000 }),
  promptTokens: FastCheck.integer({ min: 1, max: 60 }),
  reservedCompletionTokens: FastCheck.integer({ min: 0, max: 60 }),
  /** The fraction of the reservation actually used; above 1 when `overrun`. */
  used: FastCheck.double({ min: 0, max: 1, noNaN: true }),
  overrun: FastCheck.integer({ min: 0, max: 30 }),
  estimated: FastCheck.boolean()
})

type Operation = typeof operationArb extends FastCheck.Arbitrary<infer A> ? A : never

const workloadArb = FastCheck.record({
  key0: limitsArb,
  key1: limitsArb,
  tenant: limitsArb,
  fibers: FastCheck.array(FastCheck.array(operationArb, { maxLength: 8 }), { minLength: 1, maxLength: 4 })
})

type Workload = typeof workloadArb extends FastCheck.Arbitrary<infer A> ? A : never

interface Admitted {
  readonly key: number
  readonly at: number
  readonly actual: number
}

/** Runs each fiber's operations in order, all fibers at once, on the TestClock; returns what was admitted. */
const runWorkload = (workload: Workload, allowOverrun: boolean) =>
  Effect.gen(function*() {
    const principals = [principal("k0", workload.key0, workload.tenant), principal("k1", workload.key1, workload.tenant)]
    const fibers = workload.fibers
    const limiter = yield* RateLimiter
    const admitted = yield* Ref.make<ReadonlyArray<Admitted>>([])
    const held = yield* Ref.make<ReadonlyArray<number>>([0, 0])
    const tenantHeld = yield* Ref.make(0)
    const peaks = yield* Ref.make({ key: [0, 0], tenant: 0 })
    const one = (operation: Operation) =>
      Effect.gen(function*() {
        yield* Effect.sleep(operation.delayMs)
        const who = principals[operation.key]!
        const ticket = yield* limiter.acquire(who, operation)
        const at = yield* TestClock.currentTimeMillis
        const counts = yield* Ref.updateAndGet(held, (now) => now.map((count, index) => (index === operation.key ? count + 1 : count)))
        const tenantCount = yield* Ref.updateAndGet(tenantHeld, (n) => n + 1)
        yield* Ref.update(peaks, (peak) => ({ key: peak.key.map((p, index) => Math.max(p, counts[index]!)), tenant: Math.max(peak.tenant, tenantCount) }))
        yield* Effect.addFinalizer(() =>
          Effect.zipRight(Ref.update(held, (now) => now.map((count, index) => (index === operation.key ? count - 1 : count))), Ref.update(tenantHeld, (n) => n - 1))
        )
        yield* Effect.sleep(operation.holdMs)
        const actual = Math.floor(ticket.reserved * operation.used) + (allowOverrun ? operation.overrun : 0)
        yield* ticket.settle(actual)
        yield* Ref.update(admitted, (list) => [...list, { key: operation.key, at, actual }])
      }).pipe(Effect.scoped, Effect.catchAll(() => Effect.void))
    const running = yield* Effect.forEach(fibers, (operations) => Effect.fork(Effect.forEach(operations, one, { discard: true })))
    yield* TestClock.adjust("2 hours")
    yield* Effect.forEach(running, Fiber.join, { discard: true })
    return { admitted: yield* Ref.get(admitted), peaks: yield* Ref.get(peaks), limiter }
  })

/** No half-open 60 s window holds more than `limit` admissions, nor (charged at their final count) more than `tpm` tokens. */
const checkWindows = (admissions: ReadonlyArray<Admitted>, limits: UsageLimits) => {
  const sorted = [...admissions].sort((a, b) => a.at - b.at)
  if (limits.rpm !== undefined) {
    for (let index = 0; index + limits.rpm < sorted.length; index++) {
      expect(sorted[index + limits.rpm]!.at - sorted[index]!.at).toBeGreaterThanOrEqual(windowMs)
    }
  }
  if (limits.tpm !== undefined) {
    for (const start of sorted) {
      const inWindow = sorted.filter((admission) => admission.at >= start.at && admission.at < start.at + windowMs)
      expect(inWindow.reduce((sum, admission) => sum + admission.actual, 0)).toBeLessThanOrEqual(limits.tpm)
    }
  }
}


describe("RateLimiter", () => {
  // A case is mostly idle in TestClock.adjust: four at once.
  it("no 60 s window admits more requests or tokens than its limit, and concurrency stays under its maximum", () =>
    assertInLanes(workloadArb, (workload) =>
      Effect.gen(function*() {
        const { admitted, peaks } = yield* runWorkload(workload, false)
        checkWindows(admitted.filter((one) => one.key === 0), workload.key0)
        checkWindows(admitted.filter((one) => one.key === 1), workload.key1)
        checkWindows(admitted, workload.tenant)
        peaks.key.forEach((peak, index) => expect(peak).toBeLessThanOrEqual([workload.key0, workload.key1][index]!.maxConcurrent ?? Infinity))
        expect(peaks.tenant).toBeLessThanOrEqual(workload.tenant.maxConcurrent ?? Infinity)
      }).pipe(Effect.provide(RateLimiter.Default)), { numRuns: 80, lanes: 4 }))

  it("settled charges sum to the actual usage, refunds and extra charges alike, and every slot is released", () =>
    assertInLanes(workloadArb, (workload) =>
      Effect.gen(function*() {
        const { admitted, limiter } = yield* runWorkload(workload, true)
        const sum = (list: ReadonlyArray<Admitted>) => list.reduce((total, one) => total + one.actual, 0)
        for (const key of [0, 1]) {
          const usage = yield* limiter.usage(`key:k${key}`)
          expect(usage).toEqual({ inFlight: 0, charged: sum(admitted.filter((one) => one.key === key)) })
        }
        expect(yield* limiter.usage("tenant:acme")).toEqual({ inFlight: 0, charged: sum(admitted) })
      }).pipe(Effect.provide(RateLimiter.Default)), { numRuns: 50, lanes: 4 }))

  it("formats resets as OpenAI does", () => {
    expect([0, 250, 1000, 1001, 59_000, 60_000, 361_000].map(formatReset)).toEqual(["0s", "250ms", "1s", "2s", "59s", "1m0s", "6m1s"])
  })
})
