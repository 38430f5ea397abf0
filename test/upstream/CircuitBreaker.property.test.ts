import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, FastCheck, TestClock } from "effect"
import { admit, breakerAt, closedBreaker, makeCircuitBreaker, settle } from "../../src/upstream/CircuitBreaker.js"
import type { Admission, BreakerSettings, BreakerState } from "../../src/upstream/CircuitBreaker.js"

const settingsArb: FastCheck.Arbitrary<BreakerSettings> = FastCheck.record({
  failures: FastCheck.integer({ min: 1, max: 5 }),
  failureRate: FastCheck.double({ min: 0.1, max: 1, noNaN: true }),
  windowMs: FastCheck.integer({ min: 10, max: 1_000 }),
  minRequests: FastCheck.integer({ min: 1, max: 10 }),
  cooldownMs: FastCheck.integer({ min: 1, max: 500 }),
  halfOpenProbes: FastCheck.integer({ min: 1, max: 3 })
})

/** A request arrives; time passes; one of the requests let through ends (success, failure, or cancelled). */
const operationArb = FastCheck.oneof(
  FastCheck.record({ _tag: FastCheck.constant("Request" as const) }),
  FastCheck.record({ _tag: FastCheck.constant("Advance" as const), ms: FastCheck.integer({ min: 0, max: 300 }) }),
  FastCheck.record({
    _tag: FastCheck.constant("End" as const),
    pick: FastCheck.nat(),
    result: FastCheck.constantFrom("success" as const, "failure" as const, "cancelled" as const)
  })
)

describe("CircuitBreaker state machine", () => {
  it.prop("never lets a request through while open, never more probes than allowed, and follows its edges", [settingsArb, FastCheck.array(operationArb, { maxLength: 200 })], ([settings, operations]) => {
    let state: BreakerState = closedBreaker
    let now = 0
    const outstanding: Array<Admission> = []
    for (const operation of operations) {
      const before = breakerAt(state, now)
      if (operation._tag === "Advance") {
        now += operation.ms
        continue
      }
      if (operation._tag === "Request") {
        const [admission, next] = admit(settings, state, now)
        if (before._tag === "Open") expect(admission).toBeUndefined()
        if (before._tag === "Closed") expect(admission).toBe("normal")
        if (before._tag === "HalfOpen") expect(admission).toBe(before.probes < settings.halfOpenProbes ? "probe" : undefined)
        if (admission !== undefined) outstanding.push(admission)
        state = next
      } else {
        if (outstanding.length === 0) continue
        const [admission] = outstanding.splice(operation.pick % outstanding.length, 1)
        const failed = operation.result === "cancelled" ? undefined : operation.result === "failure"
        const next = settle(settings, state, admission!, failed, now)
        // Allowed edges: a probe's success closes, its failure reopens; a closed breaker opens only on a failure.
        if (before._tag === "HalfOpen" && admission === "probe" && failed === false) expect(next._tag).toBe("Closed")
        if (before._tag === "HalfOpen" && admission === "probe" && failed === true) expect(next).toEqual({ _tag: "Open", until: now + settings.cooldownMs })
        if (before._tag === "HalfOpen" && admission === "normal") expect(next).toEqual(before)
        if (before._tag === "Open") expect(next).toEqual(before)
        if (before._tag === "Closed" && next._tag === "Open") expect(failed).toBe(true)
        if (before._tag === "Closed" && failed === true && before.consecutiveFailures + 1 >= settings.failures) expect(next._tag).toBe("Open")
        if (next._tag === "Closed") expect(next.consecutiveFailures).toBeLessThan(settings.failures)
        state = next
      }
      const current = breakerAt(state, now)
      if (current._tag === "HalfOpen") {
        expect(current.probes).toBeLessThanOrEqual(settings.halfOpenProbes)
        expect(outstanding.filter((admission) => admission === "probe").length).toBeGreaterThanOrEqual(current.probes)
      }
      if (current._tag === "Open") expect(current.until).toBeGreaterThan(now)
    }
  })

  it("never opens on a success, even one that brings the window up to minRequests (a counterexample the property found)", () => {
    const settings: BreakerSettings = { failures: 2, failureRate: 0.1, windowMs: 10, minRequests: 2, cooldownMs: 1, halfOpenProbes: 1 }
    const [first, afterFirst] = admit(settings, closedBreaker, 0)
    const failed = settle(settings, afterFirst, first!, true, 0)
    const [second, afterSecond] = admit(settings, failed, 0)
    expect(settle(settings, afterSecond, second!, false, 0)._tag).toBe("Closed")
  })

  it.prop("opens on a failure rate over the window and stays open exactly its cooldown", [settingsArb, FastCheck.array(FastCheck.boolean(), { minLength: 1, maxLength: 40 })], ([settings, results]) => {
    // Everything at one instant and never enough consecutive failures: only the rate can open it.
    const relaxed = { ...settings, failures: 1_000 }
    let state: BreakerState = closedBreaker
    let seen: Array<boolean> = []
    for (const failed of results) {
      const [admission, next] = admit(relaxed, state, 0)
      if (admission === undefined) break
      state = settle(relaxed, next, admission, failed, 0)
      seen = [...seen, failed]
      const share = seen.filter(Boolean).length / seen.length
      expect(state._tag === "Open").toBe(failed && seen.length >= relaxed.minRequests && share >= relaxed.failureRate)
      if (state._tag === "Open") {
        expect(admit(relaxed, state, relaxed.cooldownMs - 1)[0]).toBeUndefined()
        expect(admit(relaxed, state, relaxed.cooldownMs)[0]).toBe("probe")
        break
      }
    }
  })

  it.effect("on Clock: opens after its failures, lets one probe through after the cooldown, closes on its success", () =>
    Effect.gen(function*() {
      const breaker = yield* makeCircuitBreaker("test-deployment", { failures: 2, failureRate: 1, windowMs: 1_000, minRequests: 100, cooldownMs: 500, halfOpenProbes: 1 })
      for (let i = 0; i < 2; i++) yield* breaker.settle((yield* breaker.admit)!, true)
      expect((yield* breaker.current)._tag).toBe("Open")
      expect(yield* breaker.admit).toBeUndefined()
      yield* TestClock.adjust(Duration.millis(499))
      expect(yield* breaker.admit).toBeUndefined()
      yield* TestClock.adjust(Duration.millis(1))
      const probe = yield* breaker.admit
      expect(probe).toBe("probe")
      expect(yield* breaker.admit).toBeUndefined()
      yield* breaker.settle("probe", false)
      expect((yield* breaker.current)._tag).toBe("Closed")
    }))
})
