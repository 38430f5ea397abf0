import { HttpClientError, HttpClientRequest, HttpServerResponse } from "@effect/platform"
import type { HttpClientResponse } from "@effect/platform"
import { Chunk, Clock, Effect, Option, Redacted, Ref, Stream } from "effect"
import type { Scope } from "effect"
import type { TokenUsage } from "../http/RequestUsage.js"
import { sseHeaders } from "../http/GenerationResponse.js"
import { UpstreamFailed, UpstreamRejected } from "./UpstreamErrors.js"
import type { UpstreamFailureKind } from "./UpstreamErrors.js"
import { classifyFault, retryAfterMs } from "./RetryPolicy.js"
import type { UpstreamPool } from "./UpstreamPool.js"

/** An upstream deployment as the forwarder needs it. */
export interface UpstreamTarget {
  readonly name: string
  /** The API base without a trailing slash, e.g. `http://127.0.0.1:8081/v1`. */
  readonly baseUrl: string
  readonly model: string
  readonly apiKey: Option.Option<Redacted.Redacted>
  readonly pool: UpstreamPool
  readonly firstByteMs: number
  readonly totalMs: number
}

/** One request to forward, as the client sent it. */
export interface ForwardRequest {
  readonly path: "/chat/completions" | "/completions"
  readonly body: Readonly<Record<string, unknown>>
  readonly stream: boolean
  /** The `model` the client is told answered: the Weft model id, not the upstream's name for it. */
  readonly answeredAs: string
  readonly requestId: string
}

/** What the forwarder reports while an answer goes out. */
export interface ForwardHooks {
  /** The upstream's first byte of content arrived (the response headers, for a JSON answer). */
  readonly firstByte: Effect.Effect<void>
  readonly usage: (usage: TokenUsage) => Effect.Effect<void>
  /** A stream ended: `false` whole, `true` cut short by the upstream, `undefined` the client went away. */
  readonly streamEnded: (failed: boolean | undefined) => Effect.Effect<void>
}

const failed = (target: UpstreamTarget, kind: UpstreamFailureKind, detail: string, extra: { status?: number; retryAfterMs?: number | undefined; cause?: unknown } = {}) =>
  new UpstreamFailed({ deployment: target.name, kind, detail, ...extra })

/** Removes the upstream's API key from text that came from the upstream (an error may quote it back). */
const scrub = (target: UpstreamTarget, text: string): string =>
  Option.match(target.apiKey, { onNone: () => text, onSome: (key) => Redacted.value(key) === "" ? text : text.replaceAll(Redacted.value(key), "[redacted]") })

const transportFailure = (target: UpstreamTarget, error: HttpClientError.HttpClientError): UpstreamFailed => {
  const code = (error.cause as { code?: unknown; cause?: { code?: unknown } } | undefined)
  const codeText = String(code?.code ?? code?.cause?.code ?? "")
  const kind = error instanceof HttpClientError.RequestError && /ECONNREFUSED|CONNECT_TIMEOUT|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH/.test(codeText)
    ? "connect"
    : "reset"
  return failed(target, kind, codeText === "" ? error.reason : codeText, { cause: error.cause })
}

const usageOf = (value: unknown): TokenUsage | undefined => {
  if (typeof value !== "object" || value === null) return undefined
  const usage = value as { prompt_tokens?: unknown; completion_tokens?: unknown }
  return typeof usage.prompt_tokens === "number" && typeof usage.completion_tokens === "number"
    ? { promptTokens: usage.prompt_tokens, completionTokens: usage.completion_tokens }
    : undefined
}

/** An answer that is not 2xx: retried (429, 5xx) or relayed as the upstream's own error. */
const statusFailure = (target: UpstreamTarget, response: HttpClientResponse.HttpClientResponse) =>
  Effect.gen(function*() {
    const text = yield* Effect.orElseSucceed(response.text, () => "")
    const parsed = yield* Effect.option(Effect.try(() => JSON.parse(text) as { error?: { message?: unknown; type?: unknown; param?: unknown; code?: unknown } }))
    const error = Option.getOrUndefined(parsed)?.error
    const message = scrub(target, typeof error?.message === "string" ? error.message : text.slice(0, 500) || `HTTP ${response.status}`)
    const verdict = classifyFault({ _tag: "Status", status: response.status })
    if (verdict._tag === "Retry") {
      const wait = retryAfterMs(response.headers["retry-after"], yield* Clock.currentTimeMillis)
      return yield* failed(target, "status", message, { status: response.status, retryAfterMs: wait })
    }
    return yield* new UpstreamRejected({
      deployment: target.name,
      status: response.status,
      error: {
        message,
        type: typeof error?.type === "string" ? error.type : "invalid_request_error",
        param: typeof error?.param === "string" ? error.param : null,
        code: typeof error?.code === "string" ? error.code : null
      }
    })
  })

/** One `data:` payload of an upstream stream. */
type Frame =
  | { readonly _tag: "Chunk"; readonly text: string }
  | { readonly _tag: "Done" }

const frame = (body: unknown) => `data: ${JSON.stringify(body)}\n\n`

const inBandError = (message: string) => frame({ error: { message, type: "server_error", param: null, code: "upstream_failed" } })

/**
 * Sends one request to an upstream and answers the client with what it says, in OpenAI's shapes, with `model` saying
 * which Weft model answered. A JSON answer is read whole before anything goes to the client; a stream is returned only
 * once its first data frame has arrived. Until then every failure is an `UpstreamFailed` the router may retry; after
 * it, a failure ends the stream with an in-band error frame (the `openai` client raises it) and is never retried.
 */
export const forward = (target: UpstreamTarget, request: ForwardRequest, hooks: ForwardHooks): Effect.Effect<
  HttpServerResponse.HttpServerResponse,
  UpstreamFailed | UpstreamRejected,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const clientWantsUsage = (request.body["stream_options"] as { include_usage?: unknown } | undefined)?.include_usage === true
    const body = request.stream
      // Usage is always asked for, so it counts into Weft's own accounting; it is passed on only when the client asked.
      ? { ...request.body, model: target.model, stream_options: { ...(request.body["stream_options"] as object | undefined), include_usage: true } }
      : { ...request.body, model: target.model }
    const headers: Record<string, string> = { "x-request-id": request.requestId, accept: request.stream ? "text/event-stream" : "application/json" }
    if (Option.isSome(target.apiKey)) headers["authorization"] = `Bearer ${Redacted.value(target.apiKey.value)}`
    const outgoing = HttpClientRequest.post(`${target.baseUrl}${request.path}`).pipe(
      HttpClientRequest.setHeaders(headers),
      HttpClientRequest.bodyUnsafeJson(body)
    )
    const timedOut = (stage: string, ms: number) => () => failed(target, "timeout", `no ${stage} within ${ms} ms`)
    yield* target.pool.sent
    const sentAt = yield* Clock.currentTimeMillis
    const response = yield* target.pool.client.execute(outgoing).pipe(
      Effect.mapError((error) => transportFailure(target, error)),
      Effect.timeoutFail({ duration: target.firstByteMs, onTimeout: timedOut("response", target.firstByteMs) })
    )
    if (response.status < 200 || response.status > 299) return yield* statusFailure(target, response)

    if (!request.stream) {
      yield* hooks.firstByte
      const json = yield* response.json.pipe(
        Effect.mapError((error) => failed(target, error.reason === "Decode" ? "protocol" : "reset", `the answer could not be read: ${error.reason}`, { cause: error.cause })),
        Effect.timeoutFail({ duration: target.totalMs, onTimeout: timedOut("whole answer", target.totalMs) })
      )
      if (typeof json !== "object" || json === null || Array.isArray(json)) return yield* failed(target, "protocol", "the answer is not a JSON object")
      const usage = usageOf((json as { usage?: unknown }).usage)
      if (usage !== undefined) yield* hooks.usage(usage)
      return HttpServerResponse.unsafeJson({ ...json, model: request.answeredAs })
    }

    const frames: Stream.Stream<Frame, UpstreamFailed> = response.stream.pipe(
      Stream.decodeText(),
      Stream.splitLines,
      Stream.filter((line) => line.startsWith("data:")),
      Stream.map((line): Frame => {
        const payload = line.slice("data:".length).trim()
        return payload === "[DONE]" ? { _tag: "Done" } : { _tag: "Chunk", text: payload }
      }),
      Stream.mapError((error) => transportFailure(target, error))
    )
    // Rewrites a chunk for the client: its `model`, and its usage only when asked for. An in-band error is a failure.
    const relay = (chunk: string): Effect.Effect<Option.Option<string>, UpstreamFailed> =>
      Effect.gen(function*() {
        const parsed = yield* Effect.try({ try: () => JSON.parse(chunk) as Record<string, unknown>, catch: (cause) => failed(target, "protocol", "a stream frame is not JSON", { cause }) })
        if (typeof parsed !== "object" || parsed === null) return yield* failed(target, "protocol", "a stream frame is not a JSON object")
        if (parsed["error"] !== undefined) {
          const message = (parsed["error"] as { message?: unknown }).message
          return yield* failed(target, "status", scrub(target, typeof message === "string" ? message : "the upstream sent an error"), { status: 502 })
        }
        const usage = usageOf(parsed["usage"])
        if (usage !== undefined) yield* hooks.usage(usage)
        if (clientWantsUsage) return Option.some(frame({ ...parsed, model: request.answeredAs }))
        const { usage: _usage, ...rest } = parsed
        // The usage-only chunk the client did not ask for.
        if (usage !== undefined && Array.isArray(parsed["choices"]) && parsed["choices"].length === 0) return Option.none()
        return Option.some(frame({ ...rest, model: request.answeredAs }))
      })
    // Pulled in the request's scope, which stays open until the response body is fully written.
    const pull = yield* Stream.toPull(frames)
    const nextFrame = pull.pipe(
      Effect.map(Option.some),
      Effect.catchAll(Option.match({ onNone: () => Effect.succeed(Option.none<Chunk.Chunk<Frame>>()), onSome: (error) => Effect.fail(error) }))
    )
    const head: Array<string> = []
    let done = false
    // Until the first frame the client has been sent nothing: every failure here may still be retried.
    yield* Effect.gen(function*() {
      while (head.length === 0 && !done) {
        const next = yield* nextFrame
        if (Option.isNone(next)) return yield* failed(target, "reset", "the stream ended before its first frame")
        for (const item of Chunk.toReadonlyArray(next.value)) {
          if (item._tag === "Done") done = true
          else if (!done) Option.match(yield* relay(item.text), { onNone: () => undefined, onSome: (text) => head.push(text) })
        }
      }
    }).pipe(Effect.timeoutFail({
      // One budget from sending to the first frame, headers included.
      duration: Math.max(0, target.firstByteMs - ((yield* Clock.currentTimeMillis) - sentAt)),
      onTimeout: timedOut("first frame", target.firstByteMs)
    }))
    yield* hooks.firstByte
    // A response whose body is never run (the client left before it started) still ends its attempt.
    yield* Effect.addFinalizer(() => hooks.streamEnded(undefined))
    const sawDone = yield* Ref.make(done)
    // Read to the body's end even after `[DONE]`: a body left unread costs the connection its keep-alive.
    const rest: Stream.Stream<string, UpstreamFailed> = Stream.repeatEffectChunkOption(pull).pipe(
      Stream.mapEffect((item) =>
        Effect.flatMap(Ref.get(sawDone), (ended) =>
          ended ? Effect.succeed(Option.none<string>()) : item._tag === "Done" ? Effect.as(Ref.set(sawDone, true), Option.none<string>()) : relay(item.text))),
      Stream.filterMap((text) => text)
    )
    const remainingMs = Math.max(0, target.totalMs - ((yield* Clock.currentTimeMillis) - sentAt))
    const body$ = Stream.concat(Stream.fromIterable(head), rest).pipe(
      Stream.interruptWhen(Effect.zipRight(Effect.sleep(remainingMs), Effect.fail(failed(target, "timeout", `the stream did not end within ${target.totalMs} ms`)))),
      Stream.concat(Stream.fromEffect(Effect.map(Ref.get(sawDone), (whole) => whole ? "data: [DONE]\n\n" : inBandError(`The upstream ${target.name} ended the stream early`)))),
      // After the first byte nothing is retried: the failure goes to the client in-band and the stream ends.
      Stream.catchAll((failure) => Stream.make(inBandError(`The upstream ${target.name} failed mid-stream: ${failure.detail}`))),
      Stream.onEnd(Effect.flatMap(Ref.get(sawDone), (whole) => hooks.streamEnded(!whole))),
      // Only the first report counts: after `onEnd`, this says nothing; without it, the client went away.
      Stream.ensuring(hooks.streamEnded(undefined)),
      Stream.encodeText
    )
    return HttpServerResponse.stream(body$, sseHeaders)
  })
