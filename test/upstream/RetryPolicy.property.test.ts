import { describe, expect, it } from "@effect/vitest"
import { Chunk, Duration, Effect, FastCheck, Fiber, Schedule, TestClock } from "effect"
import { classifyFault, retryAfterMs, retrySchedule } from "../../src/upstream/RetryPolicy.js"

const neverRetried = [400, 401, 403, 404, 413, 422]
const alwaysRetried = [429, 502, 503, 504]

describe("retry classifier", () => {
  it.prop("retries connection failures, timeouts, 429 and 5xx; never a request's own fault", [FastCheck.integer({ min: 100, max: 599 })], ([status]) => {
    const verdict = classifyFault({ _tag: "Status", status })
    if (neverRetried.includes(status) || (status >= 400 && status < 500 && status !== 429)) expect(verdict._tag).toBe("Final")
    if (alwaysRetried.includes(status)) expect(verdict._tag).toBe("Retry")
    // Only failures of the server count against its breaker; a 429 is a busy server, not a broken one.
    if (verdict._tag === "Retry") expect(verdict.breakerFailure).toBe(status !== 429)
    if (status < 400) expect(verdict._tag).toBe("Final")
  })

  it("retries every transport fault, counting it against the breaker", () => {
    for (const fault of [{ _tag: "Connect" }, { _tag: "Reset" }, { _tag: "Timeout" }] as const) {
      expect(classifyFault(fault)).toMatchObject({ _tag: "Retry", breakerFailure: true })
    }
    expect(classifyFault({ _tag: "LocalUnavailable", saturated: true })).toEqual({ _tag: "Retry", reason: "rate_limited", breakerFailure: false })
  })

  it.effect.prop(
    "backs off at most `retries` times, each delay within the cap and at least what Retry-After asks (capped)",
    [
      FastCheck.record({ retries: FastCheck.integer({ min: 0, max: 6 }), baseDelayMs: FastCheck.integer({ min: 0, max: 500 }), maxDelayMs: FastCheck.integer({ min: 0, max: 3_000 }) }),
      FastCheck.array(FastCheck.integer({ min: 0, max: 5_000 }), { minLength: 1, maxLength: 10 })
    ],
    ([settings, waits]) =>
      Effect.gen(function*() {
        // The delays before each retry (`Schedule.run` also gives the output of the step that ends it).
        const delays = yield* Schedule.run(Schedule.delays(retrySchedule<number>(settings, (wait) => wait)), 0, waits)
        Chunk.toReadonlyArray(delays).slice(0, settings.retries).map(Duration.toMillis).forEach((delay, index) => {
          expect(delay).toBeLessThanOrEqual(settings.maxDelayMs)
          expect(delay).toBeGreaterThanOrEqual(Math.min(settings.maxDelayMs, waits[index]!))
        })
        let attempts = 0
        const fiber = yield* Effect.fork(Effect.retry(
          Effect.suspend(() => Effect.fail(waits[attempts++ % waits.length]!)),
          retrySchedule<number>(settings, (wait) => wait)
        ))
        yield* TestClock.adjust(Duration.hours(1))
        yield* Fiber.await(fiber)
        expect(attempts).toBe(settings.retries + 1)
      })
  )

  it("reads Retry-After in seconds or as an HTTP date", () => {
    expect(retryAfterMs("2", 0)).toBe(2_000)
    expect(retryAfterMs(new Date(10_000).toUTCString(), 4_000)).toBe(6_000)
    expect(retryAfterMs("soon", 0)).toBeUndefined()
    expect(retryAfterMs(undefined, 0)).toBeUndefined()
  })
})
