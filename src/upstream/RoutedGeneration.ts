import { HttpServerRequest } from "@effect/platform"
import type { HttpServerResponse } from "@effect/platform"
import { Effect, Metric, Option, Ref } from "effect"
import { randomUUID } from "node:crypto"
import type { Scope } from "effect"
import type { Engine } from "../host/LocalEngine.js"
import { currentPrincipal } from "../identity/currentPrincipal.js"
import { RateLimiter } from "../identity/RateLimiter.js"
import type { RateLimitTicket } from "../identity/RateLimiter.js"
import { RequestModel } from "../http/ModelRoute.js"
import type { ApiFailure } from "../http/OpenAiErrors.js"
import type { SharedRequest } from "../http/OpenAiRequests.js"
import type { CompletionKind } from "../http/OpenAiResponses.js"
import { RequestUsage } from "../http/RequestUsage.js"
import type { TokenUsage } from "../http/RequestUsage.js"
import { WeftMetrics } from "../observability/WeftMetrics.js"
import { ModelRouter } from "./ModelRouter.js"
import type { RoutedAnswer } from "./ModelRouter.js"
import type { DeploymentsSaturated, ModelUnavailable, UpstreamFailed, UpstreamRejected } from "./UpstreamErrors.js"
import { forward } from "./UpstreamForwarder.js"

/** Failures only a routed request has. */
export type RoutedFailure = UpstreamFailed | UpstreamRejected | ModelUnavailable | DeploymentsSaturated

/** A chat or completions request as the router needs it: decoded (validated) and as the client sent it. */
interface RoutedRequest {
  readonly kind: CompletionKind
  readonly body: SharedRequest & { readonly user?: string | undefined; readonly session_id?: string | undefined; readonly max_tokens?: number | null | undefined }
  readonly raw: unknown
}

/**
 * Charges an upstream answer to the caller like a local one: admitted under the caller's rate limits with its
 * prompt estimated from the body's size (the upstream tokenizes, not Weft), then settled with the usage the upstream
 * reports, which also goes into the audit record and the token metrics. Admitted once per request, however many
 * attempts it takes.
 */
const upstreamMeter = (request: RoutedRequest) =>
  Effect.gen(function*() {
    const principal = yield* currentPrincipal
    const limiter = yield* RateLimiter
    const usageRef = yield* RequestUsage
    const seen = yield* Ref.make<TokenUsage | undefined>(undefined)
    const held = yield* Ref.make(Option.none<RateLimitTicket>())
    const admit = yield* Effect.cached(
      Option.isNone(principal)
        ? Effect.void
        : Effect.flatMap(
          limiter.acquire(principal.value, {
            promptTokens: Math.ceil(JSON.stringify(request.raw).length / 4),
            reservedCompletionTokens: request.body.max_tokens ?? 0,
            estimated: request.body.max_tokens === undefined || request.body.max_tokens === null
          }),
          (ticket) => Ref.set(held, Option.some(ticket))
        )
    )
    const tenant = Option.match(principal, { onNone: () => "", onSome: (known) => known.tenant })
    // Only the first settle counts: with the usage when it arrives, else (a failed answer) with what was seen.
    const settle = Effect.flatMap(Ref.get(seen), (used) =>
      Effect.flatMap(Ref.get(held), Option.match({ onNone: () => Effect.void, onSome: (ticket) => ticket.settle(used === undefined ? 0 : used.promptTokens + used.completionTokens) })))
    // Runs when the request's scope closes, once the whole answer is out.
    yield* Effect.addFinalizer(() => settle)
    const record = (model: string) => (usage: TokenUsage) =>
      Effect.all([
        Ref.set(seen, usage),
        // Settled as soon as the count is known, so a JSON answer's rate-limit headers already show it.
        settle,
        Ref.set(usageRef, usage),
        Metric.incrementBy(Metric.tagged(Metric.tagged(WeftMetrics.promptTokens, "model", model), "tenant", tenant), usage.promptTokens),
        Metric.incrementBy(Metric.tagged(Metric.tagged(WeftMetrics.generationTokens, "model", model), "tenant", tenant), usage.completionTokens)
      ], { discard: true })
    return { admit, record } as const
  })

/**
 * Serves a chat or completions request for a routed model (see `ModelRouter`): `None` when the model is not routed,
 * so the caller serves it from its one local engine. A local deployment is served by `local` on the engine the
 * router picked, answering as `answeredAs`; an upstream one is forwarded.
 */
export const routedGeneration = <R>(
  request: RoutedRequest,
  local: (engine: Engine, answeredAs: string) => Effect.Effect<HttpServerResponse.HttpServerResponse, ApiFailure, R>
): Effect.Effect<
  Option.Option<HttpServerResponse.HttpServerResponse>,
  ApiFailure | RoutedFailure,
  R | RequestModel | RequestUsage | RateLimiter | HttpServerRequest.HttpServerRequest | Scope.Scope
> =>
  Effect.gen(function*() {
    const router = yield* Effect.serviceOption(ModelRouter)
    if (Option.isNone(router) || !router.value.routes(request.body.model)) return Option.none()
    yield* Effect.flatMap(RequestModel, (current) => Ref.set(current, request.body.model))
    const incoming = yield* HttpServerRequest.HttpServerRequest
    const requestId = incoming.headers["x-request-id"] ?? `req_${randomUUID().replaceAll("-", "")}`
    const meter = yield* upstreamMeter(request)
    const affinityKey = request.body.session_id ?? incoming.headers["x-session-id"] ?? request.body.user
    const response = yield* router.value.route(request.body.model, affinityKey, (target, hooks): Effect.Effect<RoutedAnswer, ApiFailure | RoutedFailure, R | Scope.Scope> => {
      if (target._tag === "Local") return Effect.map(local(target.engine, target.model), (response) => ({ response, streaming: false }))
      return Effect.gen(function*() {
        yield* meter.admit
        const response = yield* forward(
          target.upstream,
          {
            path: request.kind === "chat" ? "/chat/completions" : "/completions",
            body: request.raw as Record<string, unknown>,
            stream: request.body.stream === true,
            answeredAs: target.model,
            requestId
          },
          { ...hooks, usage: meter.record(target.model) }
        )
        return { response, streaming: request.body.stream === true }
      })
    })
    return Option.some(response)
  })
