import type { FinishReason, Priority } from "./GenerationRequest.js"
import type { AdmissionRejected } from "./SchedulerErrors.js"

/** One state machine for every request; `Rejected` happens only at admission. */
export type RequestState = "Queued" | "Running" | "Completed" | "Failed" | "TimedOut" | "Cancelled" | "Rejected"

export type CancelReason = "client" | "cancel" | "shutdown"

const allowed: Record<RequestState, ReadonlyArray<RequestState>> = {
  Queued: ["Running", "TimedOut", "Cancelled", "Failed"],
  Running: ["Completed", "Failed", "TimedOut", "Cancelled"],
  Completed: [],
  Failed: [],
  TimedOut: [],
  Cancelled: [],
  Rejected: []
}

/** The states a request ends in. */
export type TerminalState = Exclude<RequestState, "Queued" | "Running">

export const isTerminal = (state: RequestState): state is TerminalState => allowed[state].length === 0

/** How each ending is named in metrics labels and log lines. */
export const outcomeLabels = {
  Completed: "completed",
  Failed: "failed",
  TimedOut: "timed_out",
  Cancelled: "cancelled",
  Rejected: "rejected"
} as const satisfies Record<TerminalState, string>

export type OutcomeLabel = (typeof outcomeLabels)[TerminalState]

/** Everything known about one request; timestamps are `Clock` milliseconds. */
export interface RequestRecord {
  readonly id: string
  readonly priority: Priority
  readonly state: RequestState
  readonly promptTokens: number
  readonly completionTokens: number
  readonly cachedTokens?: number | undefined
  readonly slot?: number | undefined
  readonly enqueuedAt: number
  readonly startedAt?: number | undefined
  readonly firstTokenAt?: number | undefined
  readonly finishedAt?: number | undefined
  readonly finishReason?: FinishReason | undefined
  readonly cancelReason?: CancelReason | undefined
  /** Why it was rejected or failed, for operators to read; branch on `rejection` or the state, never on this. */
  readonly detail?: string | undefined
  /** The admission error, when `state` is `Rejected`. */
  readonly rejection?: AdmissionRejected | undefined
  /** Which stage limit ended it, when `state` is `TimedOut`. */
  readonly timeoutStage?: "queue" | "firstToken" | "total" | undefined
  /** The trace and span the request was submitted under, for logs that outlive the submitter. */
  readonly traceId?: string | undefined
  readonly spanId?: string | undefined
  /** The submitter's log annotations (such as the HTTP request id), for the same reason. */
  readonly annotations?: Readonly<Record<string, unknown>> | undefined
}

/** A state change, published to observers (metrics, logs, tests). */
export interface LifecycleTransition {
  readonly from: RequestState | undefined
  readonly to: RequestState
  readonly at: number
  readonly record: RequestRecord
}

/** Moves `record` to `to`; an illegal move is a bug in the scheduler, so it throws. */
export const transition = (record: RequestRecord, to: RequestState, changes: Partial<RequestRecord>): RequestRecord => {
  if (!allowed[record.state].includes(to)) {
    throw new Error(`Request ${record.id}: illegal transition ${record.state} → ${to}`)
  }
  return { ...record, ...changes, state: to }
}
