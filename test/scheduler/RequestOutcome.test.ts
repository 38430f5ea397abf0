import { describe, expect, it } from "@effect/vitest"
import { Cause, Exit, FiberId } from "effect"
import { DecodeFailed } from "../../src/engine/Backend.js"
import { outcomeOf } from "../../src/scheduler/RequestOutcome.js"
import { StageTimedOut } from "../../src/scheduler/SchedulerErrors.js"

describe("outcomeOf", () => {
  it("a generation that ran to its end completes with its own finish reason", () => {
    expect(outcomeOf(Exit.succeed({ finishReason: "stop" }))).toEqual({ state: "Completed", finishReason: "stop", defect: false })
  })

  it("an interruption alone is a cancellation", () => {
    expect(outcomeOf(Exit.interrupt(FiberId.none))).toMatchObject({ state: "Cancelled", finishReason: "cancelled" })
  })

  it("a stage limit is a timeout naming its stage", () => {
    const error = new StageTimedOut({ stage: "firstToken", limitMs: 20 })
    expect(outcomeOf(Exit.fail(error))).toEqual({
      state: "TimedOut",
      finishReason: "timeout",
      error,
      detail: "time to first token exceeded its limit of 20 ms",
      timeoutStage: "firstToken",
      defect: false
    })
  })

  it("a decode failure fails the request with that error", () => {
    const error = new DecodeFailed({ slot: 0, stage: "decode", message: "injected" })
    expect(outcomeOf(Exit.fail(error))).toMatchObject({ state: "Failed", finishReason: "error", error, defect: false })
  })

  it("a defect fails the request with a generic error and is flagged for the log", () => {
    const ending = outcomeOf(Exit.failCause(Cause.die(new Error("bug"))))
    expect(ending).toMatchObject({ state: "Failed", finishReason: "error", defect: true })
    expect(ending.timeoutStage).toBeUndefined()
    expect(ending.error).toBeInstanceOf(DecodeFailed)
    expect(ending.error).toMatchObject({ slot: -1, message: "internal error" })
  })
})
