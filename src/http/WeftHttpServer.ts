import { HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { HttpServerError } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Clock, Deferred, Duration, Effect, Exit, Fiber, Layer, Option, Ref, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import * as Http from "node:http"
import { countHttpRequest, endpointOf } from "../observability/HttpRequestMetrics.js"
import type { ProcessMetrics } from "../observability/ProcessMetrics.js"
import { DecodeFailed } from "../engine/Backend.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import type { ModelRegistryShape } from "../host/ModelRegistry.js"
import { PromptEmpty, PromptTokenInvalid, PromptTooLong, QueueFull, ShuttingDown, StageTimedOut } from "../scheduler/SchedulerErrors.js"
import { browserPolicy } from "./BrowserPolicy.js"
import { GenerationCancelled, MethodNotAllowed } from "./HttpErrors.js"
import { RequestModel, soleModelId } from "./ModelRoute.js"
import { safeIdPattern } from "./SafeId.js"
import { observabilityRoutes } from "./ObservabilityRoutes.js"
import { adminAuditRoutes } from "./AdminAuditRoutes.js"
import { accountRequest } from "./RequestAccounting.js"
import { RequestUsage } from "./RequestUsage.js"
import type { TokenUsage } from "./RequestUsage.js"
import type { AuditLog } from "../identity/AuditLog.js"
import { currentPrincipal } from "../identity/currentPrincipal.js"
import type { RateLimiter } from "../identity/RateLimiter.js"
import { errorReply, errorResponse, internalError, unknownRoute } from "./OpenAiErrors.js"
import type { ApiFailure } from "./OpenAiErrors.js"
import { embeddingRoutes } from "./EmbeddingRoutes.js"
import { openAiRoutes } from "./OpenAiRoutes.js"
import { routeMethods } from "./RouteMethods.js"
import { responsesRoutes } from "./ResponsesRoutes.js"
import { sessionRoutes } from "./SessionRoutes.js"
import { tokenizeRoutes } from "./TokenizeRoutes.js"
import type { SessionStore } from "../sessions/SessionStore.js"
import { authenticateRequest, openServerRefusal } from "../identity/Authentication.js"
import type { AuthSettings } from "../identity/Authentication.js"
import { KeyStore } from "../identity/KeyStore.js"
import { OpenServerRefused } from "../identity/AuthErrors.js"
import { CurrentPrincipal } from "../identity/Principal.js"
import { adminKeyRoutes } from "./AdminKeyRoutes.js"
import { adminAlertRoutes } from "./AdminAlertRoutes.js"
import { dashboardRoutes } from "./ui/DashboardRoutes.js"
import type { Alerts } from "../observability/Alerts.js"
import type { LiveEvents } from "../observability/LiveEvents.js"
import type { Plugins } from "../plugins/Plugins.js"
import { pluginRoutes } from "./PluginRoutes.js"
import { adminModelRoutes } from "./AdminModelRoutes.js"
import type { DefineModel } from "./AdminModelRoutes.js"
import type { MemoryManager } from "../memory/MemoryManager.js"
import { ModelRouter } from "../upstream/ModelRouter.js"
import { upstreamRoutes } from "./UpstreamRoutes.js"
import { adminAdapterRoutes } from "./AdminAdapterRoutes.js"
import { fineTuningRoutes } from "./FineTuningRoutes.js"
import type { AdapterContexts } from "../host/AdapterContexts.js"

/** Where to listen and the limits the HTTP layer enforces itself. */
export interface HttpServerOptions {
  readonly host: string
  readonly port: number
  readonly maxBodyBytes: number
  /** On shutdown, how long in-flight requests may run before they are cancelled. */
  readonly shutdownGraceMs: number
  /** `Host` names answered (any port), `*` for any; default: the loopback names when bound to loopback, else any. */
  readonly allowedHosts?: ReadonlyArray<string> | undefined
  /** Browser origins allowed to call the API (CORS), `*` for any; default none. */
  readonly corsOrigins?: ReadonlyArray<string> | undefined
  /** API-key authentication; default `auto` (on once a key exists) with `/metrics` behind an admin key. */
  readonly auth?: AuthSettings | undefined
}

const defaultAuth: AuthSettings = { mode: "auto", metricsPublic: false }

/** After the grace period, how long finished responses get to flush before the remaining connections are cut. */
const flushAfterGrace = Duration.seconds(2)

const loadingHealth = { slots: { total: 0, free: 0 }, queue: { length: 0, limit: 0 } }

/** `GET /health`: 200 when every model serves, 503 while one loads, failed or drains; slots and queues summed. */
const health = Effect.gen(function*() {
  const models = yield* Effect.flatMap(ModelRegistry, (registry) => registry.models)
  const notReady = models.find((model) => model.state._tag !== "Ready")
  // A server fronting upstream models only has no local model to wait for.
  const routedOnly = models.length === 0 && Option.exists(yield* Effect.serviceOption(ModelRouter), (router) => router.modelIds.length > 0)
  if (notReady !== undefined || (models.length === 0 && !routedOnly)) {
    const status = notReady === undefined || notReady.state._tag === "Loading" ? "loading" : "error"
    return HttpServerResponse.unsafeJson({ status, ...loadingHealth }, { status: 503, headers: { "cache-control": "no-store" } })
  }
  const engines = models.flatMap((model) => (model.state._tag === "Ready" ? [model.state.engine] : []))
  const stats = yield* Effect.forEach(engines, (engine) => engine.scheduler.stats)
  const draining = stats.some((one) => one.draining)
  const sum = (of: (one: (typeof stats)[number]) => number) => stats.reduce((total, one) => total + of(one), 0)
  return HttpServerResponse.unsafeJson(
    {
      status: draining ? "draining" : "ok",
      // Which llama.cpp binaries serve (native or prebuilt); absent on backends that are not llama.cpp.
      binary: [...new Set(engines.flatMap((engine) => engine.backend.info.binary?.kind ?? []))].join(",") || undefined,
      slots: { total: sum((one) => one.slots.total), free: sum((one) => one.slots.free) },
      queue: { length: sum((one) => one.queued), limit: sum((one) => one.queueLimit) }
    },
    { status: draining ? 503 : 200, headers: { "cache-control": "no-store" } }
  )
})

/** Failures the scheduler's own request log already reports; the others are refused before a generation exists. */
const scheduledFailures = [
  QueueFull,
  ShuttingDown,
  PromptTooLong,
  PromptEmpty,
  PromptTokenInvalid,
  StageTimedOut,
  DecodeFailed,
  GenerationCancelled
]

const isScheduledFailure = (failure: ApiFailure): boolean => scheduledFailures.some((type) => failure instanceof type)

/**
 * Gives every response an `x-request-id` (the client's, when it sent a sane one) and turns every failure into
 * OpenAI's error envelope: a path routed for other methods is 405 with `Allow`, an unrouted one 404. Interruption
 * (the client went away) passes through untouched.
 */
const withRequestContext = <R>(
  app: Effect.Effect<HttpServerResponse.HttpServerResponse, ApiFailure | HttpServerError.RouteNotFound, R | RequestModel | RequestUsage | CurrentPrincipal>,
  methodsOf: (url: string) => ReadonlyArray<string>,
  policy: ReturnType<typeof browserPolicy>,
  auth: AuthSettings
) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const startedAt = yield* Clock.currentTimeMillis
    const incomingId = request.headers["x-request-id"]
    const requestId = incomingId !== undefined && safeIdPattern.test(incomingId) ? incomingId : `req_${randomUUID().replaceAll("-", "")}`
    // The path only: a query string may carry credentials, and log lines must not.
    const path = request.url.split("?")[0] ?? "/"
    let routed = true
    const requestModel = yield* Ref.make<string | undefined>(undefined)
    const modelId = Effect.flatMap(Ref.get(requestModel), (resolved) => (resolved === undefined ? soleModelId : Effect.succeed(resolved)))
    // A caller the embedding program provided (an Effect program that authenticates by itself); none for HTTP alone.
    const providedCaller = yield* currentPrincipal
    let principal = providedCaller
    // Rate limits and the audit log: who called (known once the key is checked), and the tokens a generation used.
    const usage = yield* Ref.make<TokenUsage | undefined>(undefined)
    const account = yield* accountRequest({ principal: () => principal, requestId, method: request.method, path, startedAt, usage })
    // The host check and CORS preflights come first; then the key, so handlers run knowing who calls.
    const authenticated = policy.guard(
      Effect.flatMap(authenticateRequest(request, path, auth), (authenticatedCaller) => {
        const caller = Option.orElse(authenticatedCaller, () => providedCaller)
        principal = caller
        return Option.match(caller, {
          onNone: () => app,
          onSome: (known) => Effect.annotateLogs(app, { tenant: known.tenant, keyId: known.keyId })
        }).pipe(Effect.provideService(CurrentPrincipal, caller))
      })
    )
    const tenant = () => Option.match(principal, { onNone: () => "", onSome: (known) => known.tenant })
    const response = yield* authenticated.pipe(
      Effect.provideService(RequestModel, requestModel),
      Effect.provideService(RequestUsage, usage),
      Effect.catchAll((caught) => {
        const allowed = caught instanceof HttpServerError.RouteNotFound ? methodsOf(request.url) : []
        if (caught instanceof HttpServerError.RouteNotFound && allowed.length === 0) {
          routed = false
          return Effect.succeed(errorResponse(unknownRoute(request.method, request.url)))
        }
        const failure = caught instanceof HttpServerError.RouteNotFound ? new MethodNotAllowed({ method: request.method, path, allowed }) : caught
        const reply = errorReply(failure)
        const log = reply.status >= 500 && failure instanceof DecodeFailed
          ? Effect.logError("Generation failed", failure)
          : isScheduledFailure(failure)
          ? Effect.void
          // Code and parameter only: messages about a body may quote it.
          : Effect.logInfo("request refused").pipe(
            Effect.annotateLogs({ status: reply.status, code: reply.error.code, param: reply.error.param, error: failure._tag })
          )
        return Effect.as(log, errorResponse(reply))
      }),
      Effect.catchAllDefect((defect) => Effect.as(Effect.logError("Request failed with a defect", defect), errorResponse(internalError()))),
      Effect.onInterrupt(() =>
        Effect.flatMap(modelId, (model) => countHttpRequest({ model, endpoint: endpointOf(path, routed), status: 499, tenant: tenant() }))
      ),
      Effect.annotateLogs({ requestId, method: request.method, path })
    )
    const models = yield* Effect.flatMap(ModelRegistry, (registry) => registry.models)
    const draining = models.some((model) => model.draining)
    const endpoint = endpointOf(path, routed)
    yield* countHttpRequest({ model: yield* modelId, endpoint, status: response.status, tenant: tenant() })
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
    const limitHeaders = yield* account.answered(response.status)
    const tagged = HttpServerResponse.setHeaders(policy.withCors(request, response), { ...limitHeaders, "x-request-id": requestId })
    // While draining, connections are not kept alive, so the server can close once their last response is out.
    return draining ? HttpServerResponse.setHeader(tagged, "connection", "close") : tagged
  })

/**
 * Stops accepting connections, lets in-flight requests finish within the grace period (then cancels the rest,
 * which ends their SSE streams with an error frame), and finally cuts whatever connection is still open.
 */
const gracefulShutdown = (server: Http.Server, registry: ModelRegistryShape, graceMs: number) =>
  Effect.gen(function*() {
    const closed = yield* Deferred.make<void>()
    yield* Effect.sync(() => server.close(() => Deferred.unsafeDone(closed, Exit.void)))
    const inFlight = yield* Effect.flatMap(registry.engines, (engines) => Effect.forEach(engines, (engine) => engine.scheduler.stats))
    yield* Effect.logInfo("shutting down").pipe(
      Effect.annotateLogs({
        graceMs,
        running: inFlight.reduce((total, stats) => total + stats.running, 0),
        queued: inFlight.reduce((total, stats) => total + stats.queued, 0)
      })
    )
    yield* registry.shutdown(graceMs)
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

/** What the HTTP API needs besides its options: the models, and the stores and limits every request goes through. */
export type HttpApiServices = ModelRegistry | MemoryManager | AdapterContexts | SessionStore | ProcessMetrics | KeyStore | RateLimiter | AuditLog | Alerts | LiveEvents | Plugins

/**
 * Weft's whole HTTP API (the OpenAI routes, sessions, admin, `/metrics`, `/health`) as one `@effect/platform` app,
 * with its error envelope, API keys, host check and CORS: what the server serves, and what another
 * `@effect/platform` server can mount next to its own routes (`HttpRouter.mountApp`). Refuses, as `weft serve` does,
 * to run open on a non-loopback host.
 */
const httpApp = (options: Omit<HttpServerOptions, "port" | "shutdownGraceMs"> & { readonly defineModel?: DefineModel | undefined }) =>
  Effect.gen(function*() {
    const auth = options.auth ?? defaultAuth
    const hasKeys = yield* Effect.flatMap(KeyStore, (store) => store.hasLiveKeys()).pipe(Effect.orDie)
    const refusal = openServerRefusal(options.host, auth.mode, hasKeys)
    if (refusal !== undefined) return yield* new OpenServerRefused({ host: options.host, reason: refusal })
    const router = openAiRoutes(options).pipe(HttpRouter.concat(responsesRoutes(options)), HttpRouter.concat(embeddingRoutes(options)), HttpRouter.concat(tokenizeRoutes(options)), HttpRouter.concat(sessionRoutes), HttpRouter.concat(observabilityRoutes), HttpRouter.concat(adminKeyRoutes(options)), HttpRouter.concat(adminAuditRoutes), HttpRouter.concat(upstreamRoutes), HttpRouter.concat(adminAdapterRoutes(options)), HttpRouter.get("/health", health))
      .pipe(HttpRouter.concat(dashboardRoutes), HttpRouter.concat(adminAlertRoutes), HttpRouter.concat(pluginRoutes(options)))
      // Loading models at run time needs to know how to build one; an app that mounts Weft without it lists and unloads only.
      .pipe(HttpRouter.concat(adminModelRoutes({ maxBodyBytes: options.maxBodyBytes, defineModel: options.defineModel })))
      // Fine-tuning answers where the server was composed with it (`FineTuningJobs`), 404 elsewhere.
      .pipe(HttpRouter.concat(fineTuningRoutes(options)))
    const methodsOf = routeMethods(router)
    return withRequestContext(router, methodsOf, browserPolicy(options, methodsOf), auth)
  })

/** The OpenAI-compatible HTTP server on Node's `http`, in front of the models of the `ModelRegistry`. */
export const WeftHttpServer = {
  app: httpApp,
  layer: (
    options: HttpServerOptions & { readonly defineModel?: DefineModel | undefined }
  ): Layer.Layer<HttpServer.HttpServer, HttpServerError.ServeError | OpenServerRefused, HttpApiServices> =>
    Layer.unwrapEffect(
      Effect.gen(function*() {
        const app = yield* httpApp(options)
        const server = Http.createServer()
        // One scope, so the shutdown finalizer (added last) runs before the request handler is removed.
        const serve = Layer.scopedDiscard(
          Effect.gen(function*() {
            const httpServer = yield* HttpServer.HttpServer
            const registry = yield* ModelRegistry
            yield* httpServer.serve(app)
            yield* Effect.logInfo("listening").pipe(Effect.annotateLogs({ address: addressText(httpServer.address) }))
            yield* Effect.addFinalizer(() =>
              Effect.flatMap(Effect.forkDaemon(gracefulShutdown(server, registry, options.shutdownGraceMs)), Fiber.join)
            )
          })
        )
        return serve.pipe(Layer.provideMerge(NodeHttpServer.layer(() => server, { host: options.host, port: options.port })))
      })
    )
}
