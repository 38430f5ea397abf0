import { Schema } from "effect"

/** The request carries no API key, or one that is unknown, revoked or expired. */
export class KeyRejected extends Schema.TaggedError<KeyRejected>()("KeyRejected", {
  /** Whether a key was sent at all (the message differs; the status and code do not). */
  sent: Schema.Boolean
}) {
  override get message(): string {
    return this.sent
      ? "Incorrect API key provided. The key is unknown, revoked or expired."
      : "You didn't provide an API key. Send it as `Authorization: Bearer sk-weft-…` (or in an `x-api-key` header)."
  }
}

/** The key is valid but lacks the scope the endpoint needs. */
export class ScopeMissing extends Schema.TaggedError<ScopeMissing>()("ScopeMissing", {
  scope: Schema.Literal("inference", "admin"),
  path: Schema.String
}) {
  override get message(): string {
    return `This API key does not have the \`${this.scope}\` scope, which ${this.path} requires.`
  }
}

/** `weft serve` would listen beyond loopback with no keys and authentication not explicitly off. */
export class OpenServerRefused extends Schema.TaggedError<OpenServerRefused>()("OpenServerRefused", {
  host: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return this.reason
  }
}
