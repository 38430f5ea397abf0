import { Schema } from "effect"

/** The waiting queue is at its limit; the request was not admitted. */
export class QueueFull extends Schema.TaggedError<QueueFull>()("QueueFull", {
  queued: Schema.Number,
  limit: Schema.Number,
  /** Estimated seconds until a retry could be admitted. */
  retryAfterSeconds: Schema.Number
}) {}

/** The scheduler is draining for shutdown and admits nothing new. */
export class ShuttingDown extends Schema.TaggedError<ShuttingDown>()("ShuttingDown", {}) {}

/** The prompt does not fit one sequence's context window. */
export class PromptTooLong extends Schema.TaggedError<PromptTooLong>()("PromptTooLong", {
  promptTokens: Schema.Number,
  contextSize: Schema.Number
}) {}

/** The prompt has no tokens at all. */
export class PromptEmpty extends Schema.TaggedError<PromptEmpty>()("PromptEmpty", {}) {}

/** The prompt holds a token id outside the model's vocabulary (it would fail the whole batch it lands in). */
export class PromptTokenInvalid extends Schema.TaggedError<PromptTokenInvalid>()("PromptTokenInvalid", {
  token: Schema.Number,
  vocabSize: Schema.Number
}) {}

/** A request stage outlived its limit. */
export class StageTimedOut extends Schema.TaggedError<StageTimedOut>()("StageTimedOut", {
  stage: Schema.Literal("queue", "firstToken", "total"),
  limitMs: Schema.Number
}) {
  override get message(): string {
    const stageName = { queue: "queue wait", firstToken: "time to first token", total: "total generation time" }[this.stage]
    return `${stageName} exceeded its limit of ${this.limitMs} ms`
  }
}

/** Why a request was turned away at admission. */
export type AdmissionRejected = QueueFull | ShuttingDown | PromptTooLong | PromptEmpty | PromptTokenInvalid
