import { Schema } from "effect"

/**
 * The replica that should serve a request could not be reached, or went away while serving it (its shards move to the
 * others; the client may retry). Answered 503 before the response started, as an in-band error event after.
 */
export class ReplicaUnavailable extends Schema.TaggedError<ReplicaUnavailable>()("ReplicaUnavailable", {
  message: Schema.String
}) {}
