import { HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Clock, Deferred, Duration, Effect, Exit, Fiber, Layer, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import * as Http from "node:http"
import { countHttpRequest, endpointOf } from "../observability/HttpRequestMetrics.js"
import type { ProcessMetrics } from "../observability/ProcessMetrics.js"
import { ModelHost } from "./ModelHost.js"
import type { ModelHostShape } from "./ModelHost.js"
import { observabilityRoutes } from "./ObservabilityRoutes.js"
import { errorReply, errorResponse, internalError, unknownRoute } from "./OpenAiErrors.js"
import type { ApiFailure } from "./OpenAiErrors.js"
import { openAiRoutes } from "./OpenAiRoutes.js"
import { sessionRoutes } from "./SessionRoutes.js"
import type { SessionStore } from "../sessions/SessionStore.js"

/** Where to listen and the limits the HTTP layer enforces itself. */
export interface HttpServerOptions {
  readonly host: string
  readonly port: number
  readonly maxBodyBytes: number
  /** On shutdown, how long in-flight requests may run before they are cancelled. */
  readonly shutdownGraceMs: number
}

/** After the grace period, how long finished responses get to flush before the remaining connections are cut. */
const flushAfterGrace = Duration.seconds(2)

/** `GET /health`: 200 when serving, 503 while loading or draining. */
const health = Effect.gen(function*() {
  const state = yield* Effect.flatMap(ModelHost, (host) => host.state)
  if (state._tag !== "Ready") {
    return HttpServerResponse.unsafeJson(
      { status: state._tag === "Loading" ? "loading" : "error", slots: { total: 0, free: 0 }, queue: { length: 0, limit: 0 } },
      { status: 503, headers: { "cache-control": "no-store" } }
    )
  }
  const stats = yield* state.engine.scheduler.stats
  return HttpServerResponse.unsafeJson(
    {
      status: stats.draining ? "draining" : "ok",
      slots: { total: stats.slots.total, free: stats.slots.free },
      queue: { length: stats.queued, limit: stats.queueLimit }
    },
    { status: stats.draining ? 503 : 200, headers: { "cache-control": "no-store" } }
  )
})

const requestIdPattern = /^[\w.:-]{1,128}$/

/** Failures the scheduler's own request log already reports; the others are refused before a generation exists. */
const scheduledFailures = new Set<string>([
  "QueueFull",
  "ShuttingDown",
  "PromptTooLong",
  "PromptEmpty",
  "PromptTokenInvalid",
  "StageTimedOut",
  "DecodeFailed",
  "GenerationCancelled"
])

/**
 * Gives every response an `x-request-id` (the client's, when it sent a sane one) and turns every failure into
 * OpenAI's error envelope. Interruption (the client went away) passes through untouched.
 */
const withRequestContext = <R>(
  app: Effect.Effect<HttpServerResponse.HttpServerResponse, ApiFailure | HttpServerError.RouteNotFound, R>
) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const startedAt = yield* Clock.currentTimeMillis
    const incomingId = request.headers["x-request-id"]
    const requestId = incomingId !== undefined && requestIdPattern.test(incomingId) ? incomingId : `req_${randomUUID().replaceAll("-", "")}`
    // The path only: a query string may carry credentials, and log lines must not.
    const path = request.url.split("?")[0] ?? "/"
    let routed = true
    const modelId = Effect.map(Effect.flatMap(ModelHost, (host) => host.state), (state) => state._tag === "Ready" ? state.engine.backend.info.id : "")
    const response = yield* app.pipe(
      Effect.catchAll((failure) => {
        if (failure._tag === "RouteNotFound") {
          routed = false
          return Effect.succeed(errorResponse(unknownRoute(request.method, request.url)))
        }
        const reply = errorReply(failure)
        const log = reply.status >= 500 && failure._tag === "DecodeFailed"
          ? Effect.logError("Generation failed", failure)
          : scheduledFailures.has(failure._tag)
          ? Effect.void
          // Code and parameter only: messages about a body may quote it.
          : Effect.logInfo("request refused").pipe(
            Effect.annotateLogs({ status: reply.status, code: reply.error.code, param: reply.error.param, error: failure._tag })
          )
        return Effect.as(log, errorResponse(reply))
      }),
      Effect.catchAllDefect((defect) => Effect.as(Effect.logError("Request failed with a defect", defect), errorResponse(internalError()))),
      Effect.onInterrupt(() =>
        Effect.flatMap(modelId, (model) => countHttpRequest({ model, endpoint: endpointOf(path, routed), status: 499 }))
      ),
      Effect.annotateLogs({ requestId, method: request.method, path })
    )
    const state = yield* Effect.flatMap(ModelHost, (host) => host.state)
    const draining = state._tag === "Ready" && (yield* state.engine.scheduler.isDraining)
    const endpoint = endpointOf(path, routed)
    yield* countHttpRequest({ model: yield* modelId, endpoint, status: response.status })
    yield* Effect.logDebug("http response").pipe(
      Effect.annotateLogs({
        requestId,
        method: request.method,
        path,
        endpoint,
        status: response.status,
        durationMs: (yield* Clock.currentTimeMillis) - startedAt
      })
    )
    const tagged = HttpServerResponse.setHeader(response, "x-request-id", requestId)
    // While draining, connections are not kept alive, so the server can close once their last response is out.
    return draining ? HttpServerResponse.setHeader(tagged, "connection", "close") : tagged
  })

/**
 * Stops accepting connections, lets in-flight requests finish within the grace period (then cancels the rest,
 * which ends their SSE streams with an error frame), and finally cuts whatever connection is still open.
 */
const gracefulShutdown = (server: Http.Server, host: ModelHostShape, graceMs: number) =>
  Effect.gen(function*() {
    const closed = yield* Deferred.make<void>()
    yield* Effect.sync(() => server.close(() => Deferred.unsafeDone(closed, Exit.void)))
    const state = yield* host.state
    const inFlight = state._tag === "Ready" ? yield* state.engine.scheduler.stats : undefined
    yield* Effect.logInfo("shutting down").pipe(
      Effect.annotateLogs({ graceMs, running: inFlight?.running ?? 0, queued: inFlight?.queued ?? 0 })
    )
    if (state._tag === "Ready") yield* state.engine.scheduler.shutdown(graceMs)
    // A response that ends leaves its keep-alive connection idle, which `server.close` alone would wait on.
    const closeIdle = Effect.sync(() => server.closeIdleConnections()).pipe(Effect.repeat(Schedule.spaced(Duration.millis(50))))
    yield* Effect.raceFirst(Deferred.await(closed), closeIdle).pipe(Effect.timeoutOption(flushAfterGrace))
    yield* Effect.sync(() => server.closeAllConnections())
    yield* Effect.logInfo("shut down")
  }).pipe(
    // Finalizers run uninterruptibly, where a timeout cannot interrupt what it races: it would wait out every
    // generation instead of the grace period. The finalizer's own fiber is already being interrupted, so this
    // runs interruptibly on a fiber of its own (see the finalizer below).
    Effect.interruptible,
    Effect.withSpan("WeftHttpServer.shutdown")
  )

const addressText = (address: HttpServer.Address): string =>
  address._tag === "UnixAddress" ? `unix:${address.path}` : `${address.hostname}:${address.port}`

/** The OpenAI-compatible HTTP server on Node's `http`, in front of the engine `ModelHost` loads. */
export const WeftHttpServer = {
  layer: (
    options: HttpServerOptions
  ): Layer.Layer<HttpServer.HttpServer, HttpServerError.ServeError, ModelHost | SessionStore | ProcessMetrics> =>
    Layer.unwrapEffect(
      Effect.sync(() => {
        const server = Http.createServer()
        const router = openAiRoutes(options).pipe(HttpRouter.concat(sessionRoutes), HttpRouter.concat(observabilityRoutes), HttpRouter.get("/health", health))
        // One scope, so the shutdown finalizer (added last) runs before the request handler is removed.
        const serve = Layer.scopedDiscard(
          Effect.gen(function*() {
            const httpServer = yield* HttpServer.HttpServer
            const host = yield* ModelHost
            yield* httpServer.serve(withRequestContext(router))
            yield* Effect.logInfo("listening").pipe(Effect.annotateLogs({ address: addressText(httpServer.address) }))
            yield* Effect.addFinalizer(() =>
              Effect.flatMap(Effect.forkDaemon(gracefulShutdown(server, host, options.shutdownGraceMs)), Fiber.join)
            )
          })
        )
        return serve.pipe(Layer.provideMerge(NodeHttpServer.layer(() => server, { host: options.host, port: options.port })))
      })
    )
}
