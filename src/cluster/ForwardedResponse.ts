import { HttpBody, HttpClient, HttpClientRequest, HttpServerResponse } from "@effect/platform"
import { Cause, Channel, Duration, Effect, Option, Ref, Schema, Sink, Stream } from "effect"
import type { Scope } from "effect"
import { errorReply } from "../http/OpenAiErrors.js"
import { forwardedHeader } from "./ClusterGate.js"
import { ReplicaUnavailable } from "./ClusterErrors.js"

/** The relayed response's status and headers: the first piece of a forwarded response. */
export class ResponseHead extends Schema.TaggedClass<ResponseHead>()("Head", {
  status: Schema.Number,
  headers: Schema.Record({ key: Schema.String, value: Schema.String })
}) {}

/** A piece of the relayed response body, as the serving replica's HTTP server wrote it. */
export class ResponseBytes extends Schema.TaggedClass<ResponseBytes>()("Body", { bytes: Schema.Uint8ArrayFromSelf }) {}

/** One piece of a forwarded response. */
export type ForwardedChunk = ResponseHead | ResponseBytes

/** The serving replica could not be asked: none took the session, or its HTTP server refused or broke the connection before answering. */
export class TurnNotRelayed extends Schema.TaggedError<TurnNotRelayed>()("TurnNotRelayed", { message: Schema.String }) {}

/** A forwarded HTTP request: the endpoint, the client's headers and its JSON body. */
export interface ForwardedRequest {
  readonly path: string
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
}

/** Headers that describe one hop's connection or body framing, never passed on. */
const hopHeaders = new Set(["host", "connection", "keep-alive", "content-length", "transfer-encoding", "upgrade", "te", "trailer", "date"])

/** The headers of `headers` that another server may receive (or send on) unchanged. */
export const forwardableHeaders = (headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>): Record<string, string> =>
  Object.fromEntries(
    Object.entries(headers).flatMap(([name, value]) =>
      hopHeaders.has(name.toLowerCase()) || value === undefined ? [] : [[name.toLowerCase(), typeof value === "string" ? value : value.join(", ")]]
    )
  )

/** The response header naming the replica (`host:cluster-port`) that served a forwarded request. */
export const servedByHeader = "x-weft-replica"

/**
 * Sends `request` to the Weft server at `baseUrl` (replica `servedBy`) as a request already forwarded, so it is served
 * there: its response's head, and the head and body as pieces.
 */
export const relayResponse = (
  baseUrl: string,
  servedBy: string,
  request: ForwardedRequest
): Effect.Effect<{ readonly head: ResponseHead; readonly stream: Stream.Stream<ForwardedChunk, TurnNotRelayed> }, TurnNotRelayed, HttpClient.HttpClient> =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const response = yield* client.execute(
      HttpClientRequest.post(`${baseUrl}${request.path}`, {
        headers: { ...request.headers, [forwardedHeader]: "1" },
        body: HttpBody.text(request.body, "application/json")
      })
    )
    const head = new ResponseHead({ status: response.status, headers: { ...forwardableHeaders(response.headers), [servedByHeader]: servedBy } })
    const body = Stream.map(response.stream, (bytes) => new ResponseBytes({ bytes }))
    return { head, stream: Stream.concat(Stream.succeed<ForwardedChunk>(head), body).pipe(Stream.mapError((error) => new TurnNotRelayed({ message: error.message }))) }
  }).pipe(Effect.mapError((error) => new TurnNotRelayed({ message: error.message })))

/** `relayResponse` as one stream of pieces. */
export const relay = (baseUrl: string, servedBy: string, request: ForwardedRequest): Stream.Stream<ForwardedChunk, TurnNotRelayed, HttpClient.HttpClient> =>
  Stream.unwrap(Effect.map(relayResponse(baseUrl, servedBy, request), (response) => response.stream))

const sseError = (failure: ReplicaUnavailable) => new TextEncoder().encode(`data: ${JSON.stringify({ error: errorReply(failure).error })}\n\n`)

const lost = (message: string) => new ReplicaUnavailable({ message })

/**
 * Every way a forwarded response can break, as the one failure the client sees: the cluster's transport reports a
 * lost connection as a defect, and a failure in the part after the head comes back wrapped in a `ChannelException`.
 */
const asLostReplica = <A, R>(stream: Stream.Stream<A, ReplicaUnavailable, R>): Stream.Stream<A, ReplicaUnavailable, R> =>
  // An interruption from upstream (the owner's runner shutting down) is a lost replica too; this request's own
  // interruption (its client went away) is not catchable, so it still tears everything down.
  Stream.catchAllCause(stream, (cause) => {
    const known = [...Cause.failures(cause), ...Array.from(Cause.defects(cause), (defect) => (Channel.isChannelException(defect) ? defect.error : defect))]
      .find((error): error is ReplicaUnavailable => error instanceof ReplicaUnavailable)
    return Stream.fail(known ?? lost("The connection to the replica serving this request broke"))
  })

/**
 * The HTTP response for a forwarded request's pieces. A serving replica that dies breaks the connection at once; one
 * that hangs is presumed gone after `silence` without a piece (longer than a request may wait there for a slot).
 * Before the head that is a 503; an event stream that had started ends with an in-band error event; any other body is
 * collected first, so it is all or a 503.
 */
export const forwardedResponse = <R>(
  chunks: Stream.Stream<ForwardedChunk, { readonly message: string }, R>,
  silence: Duration.DurationInput
): Effect.Effect<HttpServerResponse.HttpServerResponse, ReplicaUnavailable, Scope.Scope | R> =>
  Effect.gen(function*() {
    const pieces = chunks.pipe(
      Stream.mapError((error) => lost(`The replica serving this request failed: ${error.message}`)),
      asLostReplica,
      Stream.timeoutFail(() => lost(`The replica serving this request sent nothing for ${Duration.format(silence)}; it is presumed gone`), silence)
    )
    const [first, rest] = yield* Stream.peel(pieces, Sink.head())
    if (Option.isNone(first) || first.value._tag !== "Head") return yield* lost("The replica serving this request ended without answering")
    const { status, headers } = first.value
    // A second head is the turn started again elsewhere after its owner died: what was sent cannot be taken back.
    const body = asLostReplica(Stream.mapEffect(rest, (chunk) =>
      chunk._tag === "Body" ? Effect.succeed(chunk.bytes) : Effect.fail(lost("The replica serving this request went away mid-response"))))
    const { "content-type": contentType, ...others } = headers
    if (contentType?.startsWith("text/event-stream") === true) {
      // Weft's event streams end with `[DONE]` or an error event; one that stops short lost its replica.
      const tail = yield* Ref.make("")
      const relayed = Stream.catchAll(body, (failure) => Stream.make(sseError(failure)))
      const seen = Stream.tap(relayed, (piece) => Ref.update(tail, (before) => (before + new TextDecoder().decode(piece)).slice(-256)))
      const finished = Effect.map(Ref.get(tail), (text) => text.includes("data: [DONE]") || text.includes("data: {\"error\":"))
      const ending = Stream.unwrap(
        Effect.map(finished, (done) => (done ? Stream.empty : Stream.make(sseError(lost("The replica serving this request stopped mid-response")))))
      )
      return HttpServerResponse.stream(Stream.concat(seen, ending), { status, headers: others, contentType })
    }
    const parts = yield* Stream.runCollect(body)
    return HttpServerResponse.uint8Array(Buffer.concat(Array.from(parts)), { status, headers: others, contentType })
  })
