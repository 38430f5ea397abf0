import { Cause, Exit, Option } from "effect"
import { DecodeFailed } from "../engine/Backend.js"
import type { FinishReason } from "./GenerationRequest.js"
import type { TerminalState } from "./RequestLifecycle.js"
import { StageTimedOut } from "./SchedulerErrors.js"

/** How a generation that ran to its end ended. */
export interface Outcome {
  readonly finishReason: FinishReason
}

/** How a request's generation fiber ended, as its record and its caller see it. */
export interface Ending {
  readonly state: Exclude<TerminalState, "Rejected">
  readonly finishReason: FinishReason
  /** What the caller is told went wrong, when something did. */
  readonly error?: StageTimedOut | DecodeFailed | undefined
  /** The error's message, for operators. */
  readonly detail?: string | undefined
  readonly timeoutStage?: StageTimedOut["stage"] | undefined
  /** The generation died of a defect (a bug); `error` is then a generic stand-in. */
  readonly defect: boolean
}

/** Maps the exit of one request's generation to its final state, finish reason and error. */
export const outcomeOf = (exit: Exit.Exit<Outcome, StageTimedOut | DecodeFailed>): Ending => {
  if (Exit.isSuccess(exit)) return { state: "Completed", finishReason: exit.value.finishReason, defect: false }
  if (Cause.isInterruptedOnly(exit.cause)) return { state: "Cancelled", finishReason: "cancelled", defect: false }
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure) && failure.value instanceof StageTimedOut) {
    const error = failure.value
    return { state: "TimedOut", finishReason: "timeout", error, detail: error.message, timeoutStage: error.stage, defect: false }
  }
  const error = Option.isSome(failure)
    ? failure.value
    : new DecodeFailed({ slot: -1, stage: "decode", message: "internal error" })
  return { state: "Failed", finishReason: "error", error, detail: error.message, defect: Option.isNone(failure) }
}
