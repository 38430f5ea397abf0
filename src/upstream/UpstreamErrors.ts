import { Schema } from "effect"

/** How an exchange with an upstream failed before its answer was complete. */
export const UpstreamFailureKind = Schema.Literal("connect", "reset", "timeout", "status", "protocol")
export type UpstreamFailureKind = Schema.Schema.Type<typeof UpstreamFailureKind>

/** An upstream could not be reached or answered with a status worth retrying elsewhere (429, 5xx). */
export class UpstreamFailed extends Schema.TaggedError<UpstreamFailed>()("UpstreamFailed", {
  deployment: Schema.String,
  kind: UpstreamFailureKind,
  status: Schema.optional(Schema.Number),
  /** From the upstream's `Retry-After`. */
  retryAfterMs: Schema.optional(Schema.Number),
  detail: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {
  override get message(): string {
    return `Upstream ${this.deployment} failed (${this.kind}${this.status === undefined ? "" : ` ${this.status}`}): ${this.detail}`
  }
}

/** An upstream refused the request itself (400, 401, 404, 422, …): never retried; its error is relayed. */
export class UpstreamRejected extends Schema.TaggedError<UpstreamRejected>()("UpstreamRejected", {
  deployment: Schema.String,
  status: Schema.Number,
  error: Schema.Struct({
    message: Schema.String,
    type: Schema.String,
    param: Schema.NullOr(Schema.String),
    code: Schema.NullOr(Schema.String)
  })
}) {
  override get message(): string {
    return this.error.message
  }
}

/** Every deployment of a model, and of each of its fallbacks, is down (breaker open or failed). */
export class ModelUnavailable extends Schema.TaggedError<ModelUnavailable>()("ModelUnavailable", {
  model: Schema.String,
  /** The model ids tried, the requested one first. */
  tried: Schema.Array(Schema.String)
}) {
  override get message(): string {
    const others = this.tried.filter((model) => model !== this.model)
    return `The model \`${this.model}\` is unavailable: every deployment is down or failing` +
      (others.length === 0 ? "" : `, and so are its fallbacks (${others.map((model) => `\`${model}\``).join(", ")})`) + "; retry later"
  }
}

/** Every deployment of a model (and its fallbacks) is busy or backing off; the client should retry after a while. */
export class DeploymentsSaturated extends Schema.TaggedError<DeploymentsSaturated>()("DeploymentsSaturated", {
  model: Schema.String,
  retryAfterSeconds: Schema.Number
}) {
  override get message(): string {
    return `Every deployment of \`${this.model}\` is at capacity; retry after ${this.retryAfterSeconds} s`
  }
}
