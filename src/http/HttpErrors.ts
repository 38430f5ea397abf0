import { Schema } from "effect"
import { quoteValue, shorten } from "./QuotedValue.js"

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

/** The JSON body nests arrays and objects deeper than any request needs (and than is safe to walk recursively). */
export class BodyNestedTooDeep extends Schema.TaggedError<BodyNestedTooDeep>()("BodyNestedTooDeep", {
  limit: Schema.Number
}) {
  override get message(): string {
    return `The JSON body nests arrays and objects more than ${this.limit} levels deep; at most ${this.limit} levels are accepted.`
  }
}

/** A request body without a JSON content type (a browser's form or `text/plain` post, or no `Content-Type` at all). */
export class BodyNotDeclaredJson extends Schema.TaggedError<BodyNotDeclaredJson>()("BodyNotDeclaredJson", {
  /** The media type sent, if any. */
  contentType: Schema.optional(Schema.String)
}) {
  override get message(): string {
    const sent = this.contentType === undefined ? "no Content-Type" : `Content-Type ${quoteValue(this.contentType)}`
    return `The request body must be sent with Content-Type: application/json (got ${sent}).`
  }
}

/** The `Host` header names a host this server does not answer for (a DNS-rebinding page, or a misdirected request). */
export class HostNotAllowed extends Schema.TaggedError<HostNotAllowed>()("HostNotAllowed", {
  /** The `Host` header as sent; absent when there was none. */
  host: Schema.optional(Schema.String)
}) {
  override get message(): string {
    const host = this.host === undefined ? "no Host header" : `Host ${quoteValue(this.host)}`
    return `This server does not answer requests for ${host}; allow it with --allowed-hosts.`
  }
}

/** A CORS preflight from a browser origin that `--cors-origins` does not list. */
export class OriginNotAllowed extends Schema.TaggedError<OriginNotAllowed>()("OriginNotAllowed", {
  origin: Schema.String
}) {
  override get message(): string {
    return `Cross-origin requests from ${quoteValue(this.origin)} are not allowed; allow the origin with --cors-origins.`
  }
}

/** The path is routed, but not for this method. */
export class MethodNotAllowed extends Schema.TaggedError<MethodNotAllowed>()("MethodNotAllowed", {
  method: Schema.String,
  path: Schema.String,
  /** The methods the path answers, as the `Allow` header lists them. */
  allowed: Schema.Array(Schema.String)
}) {
  override get message(): string {
    return `${shorten(this.method)} is not allowed on ${shorten(this.path)}; it answers ${this.allowed.join(", ")}.`
  }
}

/** No stored response has this id (never stored, `store: false`, deleted or expired). */
export class ResponseNotFound extends Schema.TaggedError<ResponseNotFound>()("ResponseNotFound", {
  responseId: Schema.String,
  /** The body parameter that named it (`previous_response_id`), or null for a path id. */
  param: Schema.NullOr(Schema.String)
}) {
  override get message(): string {
    return `No response with id \`${this.responseId}\` is stored (it may have been created with store: false, deleted, or expired).`
  }
}
