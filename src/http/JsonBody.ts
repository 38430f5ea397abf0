import { HttpServerRequest } from "@effect/platform"
import { NodeHttpServerRequest, NodeStream } from "@effect/platform-node"
import { Effect, Stream } from "effect"
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
    const chunks: Array<Uint8Array> = []
    yield* NodeStream.fromReadable<BodyNotJson, Uint8Array>(
      () => incoming,
      () => new BodyNotJson({ reason: "the body could not be read" }),
      // Destroying the request would destroy the socket too, and with it the chance to answer 413.
      { closeOnDone: false }
    ).pipe(
      Stream.runFoldEffect(0, (received, chunk) => {
        const total = received + chunk.length
        if (total > limitBytes) return new BodyTooLarge({ limitBytes })
        chunks.push(chunk)
        return Effect.succeed(total)
      }),
      // Only once the stream has let go of the request, so its listeners do not hold the data back.
      Effect.tapError((error) => (error._tag === "BodyTooLarge" ? discardRest(incoming) : Effect.void))
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
