import { HttpServerRequest } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Effect } from "effect"
import type * as Http from "node:http"
import { BodyNestedTooDeep, BodyNotDeclaredJson, BodyNotJson, BodyTooLarge, InvalidParam } from "./HttpErrors.js"
import { findBadText, textProblemDescription } from "./TextHygiene.js"

/** After a 413, how much of the rest of an oversized body is discarded before the connection is cut. */
const discardLimitBytes = 16 * 1024 * 1024

/**
 * Lets the client finish sending while the 413 goes out: closing a socket that still has unread bytes makes the
 * kernel reset the connection, and the client may lose the response. Past the discard limit the socket is cut.
 */
const discardRest = (incoming: Http.IncomingMessage) =>
  Effect.sync(() => {
    let discarded = 0
    incoming.on("data", (chunk: Buffer) => {
      discarded += chunk.length
      if (discarded > discardLimitBytes) incoming.socket.destroy()
    })
    incoming.resume()
  })

const declaredLength = (header: string | undefined): number | undefined => {
  if (header === undefined || !/^\d+$/.test(header.trim())) return undefined
  return Number(header.trim())
}

/**
 * How deep a body may nest arrays and objects. A json_schema of 30 nested objects fits; code that walks a value
 * recursively (error formatting, schema compilers) stays far from the stack limit.
 */
export const maxJsonDepth = 64

/** `application/json` or any `application/*+json`, with or without parameters such as `charset`. */
const isJsonMediaType = (contentType: string): boolean =>
  /^application\/(?:[\w.-]+\+)?json$/.test(contentType.split(";")[0]!.trim().toLowerCase())

/** Whether JSON text nests arrays and objects deeper than `limit`: one pass over the text, before anything recursive sees it. */
export const nestsDeeperThan = (text: string, limit: number): boolean => {
  let depth = 0
  let inString = false
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index)
    if (inString) {
      if (code === 0x5c) index++ // a backslash: the next character is escaped
      else if (code === 0x22) inString = false
    } else if (code === 0x22) {
      inString = true
    } else if (code === 0x5b || code === 0x7b) {
      if (++depth > limit) return true
    } else if (code === 0x5d || code === 0x7d) {
      depth--
    }
  }
  return false
}

/**
 * The body's bytes, refused once they pass `limitBytes`. Read from the request's own events rather than through a
 * `Stream`: a small body is already buffered when the route runs, and the stream's machinery cost most of a
 * millisecond of the JS thread per request, which every running generation waits out between two tokens.
 */
const bodyChunks = (incoming: Http.IncomingMessage, limitBytes: number) =>
  Effect.async<Array<Buffer>, BodyTooLarge | BodyNotJson>((resume) => {
    const chunks: Array<Buffer> = []
    if (incoming.readableEnded) {
      resume(Effect.succeed(chunks))
      return
    }
    const unreadable = () => Effect.fail(new BodyNotJson({ reason: "the body could not be read" }))
    if (incoming.destroyed) {
      resume(unreadable())
      return
    }
    let received = 0
    const done = (result: Effect.Effect<Array<Buffer>, BodyTooLarge | BodyNotJson>) => {
      stop()
      // Destroying the request would destroy the socket too, and with it the chance to answer 413.
      incoming.pause()
      resume(result)
    }
    const onData = (chunk: Buffer) => {
      received += chunk.length
      if (received > limitBytes) done(Effect.fail(new BodyTooLarge({ limitBytes })))
      else chunks.push(chunk)
    }
    const onEnd = () => done(Effect.succeed(chunks))
    const onFailure = () => done(unreadable())
    const stop = () => {
      incoming.off("data", onData)
      incoming.off("end", onEnd)
      incoming.off("error", onFailure)
      incoming.off("close", onFailure)
    }
    incoming.on("data", onData)
    incoming.on("end", onEnd)
    incoming.on("error", onFailure)
    // Gone before its end: the client went away mid-body.
    incoming.on("close", onFailure)
    incoming.resume()
    return Effect.sync(stop)
  })

/**
 * Reads the request body as JSON. Refuses bodies over `limitBytes` (from `Content-Length` before reading a byte, and
 * while reading for chunked bodies), bodies not sent as JSON (what a browser can post cross-site without asking
 * first), and JSON nested deeper than `maxJsonDepth`.
 */
export const readJsonBody = (limitBytes: number) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const incoming = NodeHttpServerRequest.toIncomingMessage(request)
    const declared = declaredLength(request.headers["content-length"])
    if (declared !== undefined && declared > limitBytes) {
      yield* discardRest(incoming)
      return yield* new BodyTooLarge({ limitBytes, declaredBytes: declared })
    }
    const contentType = request.headers["content-type"]
    if (contentType === undefined || !isJsonMediaType(contentType)) return yield* new BodyNotDeclaredJson({ contentType })
    const chunks = yield* Effect.tapError(
      bodyChunks(incoming, limitBytes),
      // Only once the reader has let go of the request, so its listeners do not hold the data back.
      (error) => (error._tag === "BodyTooLarge" ? discardRest(incoming) : Effect.void)
    )
    const text = Buffer.concat(chunks).toString("utf8")
    if (text.trim() === "") return yield* new BodyNotJson({ reason: "the body is empty" })
    if (nestsDeeperThan(text, maxJsonDepth)) return yield* new BodyNestedTooDeep({ limit: maxJsonDepth })
    const body = yield* Effect.try({
      try: (): unknown => JSON.parse(text),
      catch: (error) => new BodyNotJson({ reason: error instanceof Error ? error.message : "invalid JSON" })
    })
    const bad = findBadText(body)
    if (bad !== undefined) {
      const where = bad.param === "" ? "The request body" : `'${bad.param}'`
      return yield* new InvalidParam({
        param: bad.param === "" ? null : bad.param,
        message: `${where} holds ${textProblemDescription(bad.problem)}, which text parameters may not contain.`,
        code: "invalid_text"
      })
    }
    return body
  })
