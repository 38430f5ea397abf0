import { Entity } from "@effect/cluster"
import { Rpc } from "@effect/rpc"
import { Schema } from "effect"

/** The replica owning a session: where its turns run, over HTTP. */
export class SessionOwner extends Schema.Class<SessionOwner>("SessionOwner")({
  /** The owner's HTTP base URL, as other replicas reach it. */
  url: Schema.String,
  /** The owner's runner address (`host:cluster-port`), named in `x-weft-replica`. */
  replica: Schema.String
}) {}

/** Which replica owns the session now: the one running its entity, i.e. owning its shard. */
export const Locate = Rpc.make("Locate", { success: SessionOwner })

/**
 * A chat session as a cluster entity, keyed by its session id. The entity places the session: it lives on the replica
 * owning the session's shard, and every turn is sent to that replica, whose prefix cache holds the conversation from
 * the turn before. The turn itself streams over plain HTTP from the owner rather than as an entity stream:
 * `@effect/cluster` routes a streamed reply's acknowledgements by the shard's current owner, so a stream stalls when
 * its shard moves (a rolling restart) and is never ended when its caller's replica dies; an HTTP response has its own
 * back-pressure, ends with either side's connection, and finishes on its replica while the shard moves on.
 */
export const ChatSession = Entity.make("ChatSession", [Locate])
