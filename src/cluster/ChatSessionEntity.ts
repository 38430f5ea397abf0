import { Entity } from "@effect/cluster"
import { Rpc } from "@effect/rpc"
import { Schema } from "effect"

/** The relayed response's status and headers: the first chunk of a forwarded turn. */
export class ResponseHead extends Schema.TaggedClass<ResponseHead>()("Head", {
  status: Schema.Number,
  headers: Schema.Record({ key: Schema.String, value: Schema.String })
}) {}

/** A piece of the relayed response body, as the owner's HTTP server wrote it. */
export class ResponseBytes extends Schema.TaggedClass<ResponseBytes>()("Body", { bytes: Schema.Uint8ArrayFromSelf }) {}

/** Sent every couple of seconds while the owner works, so a caller can tell a slow turn from a dead owner. */
export class OwnerAlive extends Schema.TaggedClass<OwnerAlive>()("Tick", {}) {}

/** One piece of a forwarded response. */
export const ForwardedChunk = Schema.Union(ResponseHead, ResponseBytes, OwnerAlive)
export type ForwardedChunk = typeof ForwardedChunk.Type

/** The owner could not run the turn through its own HTTP server. */
export class TurnNotRelayed extends Schema.TaggedError<TurnNotRelayed>()("TurnNotRelayed", { message: Schema.String }) {}

/** A forwarded HTTP request: the endpoint, the client's headers and its JSON body. */
export const ForwardedRequest = Schema.Struct({
  path: Schema.String,
  headers: Schema.Record({ key: Schema.String, value: Schema.String }),
  body: Schema.String
})
export type ForwardedRequest = typeof ForwardedRequest.Type

/** One chat turn of the session, run by the replica owning the session's shard and streamed back as it is written. */
export const Turn = Rpc.make("Turn", { payload: ForwardedRequest, success: ForwardedChunk, error: TurnNotRelayed, stream: true })

/**
 * A chat session as a cluster entity, keyed by its session id: every turn of a session runs on the replica owning its
 * shard, whose prefix cache holds the conversation from the turn before.
 */
export const ChatSession = Entity.make("ChatSession", [Turn])
