import { Schema } from "effect"

/** The request body is not valid JSON. */
export class BodyNotJson extends Schema.TaggedError<BodyNotJson>()("BodyNotJson", {
  reason: Schema.String
}) {
  override get message(): string {
    return `We could not parse the JSON body of your request (${this.reason}). Send a JSON object with Content-Type: application/json.`
  }
}

/** The request body is larger than the server accepts. */
export class BodyTooLarge extends Schema.TaggedError<BodyTooLarge>()("BodyTooLarge", {
  limitBytes: Schema.Number,
  /** From `Content-Length` when the client declared it. */
  declaredBytes: Schema.optional(Schema.Number)
}) {
  override get message(): string {
    const declared = this.declaredBytes === undefined ? "" : ` (Content-Length ${this.declaredBytes})`
    return `Request body is larger than the limit of ${this.limitBytes} bytes${declared}`
  }
}

/** A body parameter is missing, of the wrong type, out of range, or not supported. */
export class InvalidParam extends Schema.TaggedError<InvalidParam>()("InvalidParam", {
  /** Dotted path of the parameter, as OpenAI reports it (`messages[0].content`). */
  param: Schema.NullOr(Schema.String),
  message: Schema.String,
  code: Schema.NullOr(Schema.String)
}) {}

/** The generation was cancelled before it finished: the server is shutting down, or an operator cancelled it. */
export class GenerationCancelled extends Schema.TaggedError<GenerationCancelled>()("GenerationCancelled", {
  shuttingDown: Schema.Boolean
}) {
  override get message(): string {
    return this.shuttingDown
      ? "The request was cancelled because the server is shutting down"
      : "The request was cancelled before it finished"
  }
}

/** No live session has this id for this client (never created, deleted, expired, or another client's). */
export class SessionNotFound extends Schema.TaggedError<SessionNotFound>()("SessionNotFound", {
  sessionId: Schema.String
}) {
  override get message(): string {
    return `No session with id \`${this.sessionId}\` exists (it may have expired or been deleted).`
  }
}
