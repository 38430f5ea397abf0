import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Option } from "effect"
import { ModelRouter } from "../upstream/ModelRouter.js"

/**
 * `GET /admin/upstreams`: every deployment of the routed models with its breaker state, requests in flight, latency
 * EWMA, successes, failures by reason, retries and (for an upstream) its connection pool. Upstream API keys are never
 * part of it.
 */
export const upstreamRoutes = HttpRouter.empty.pipe(
  HttpRouter.get(
    "/admin/upstreams",
    Effect.gen(function*() {
      const router = yield* Effect.serviceOption(ModelRouter)
      const deployments = Option.isNone(router) ? [] : yield* router.value.view
      return HttpServerResponse.unsafeJson({ deployments }, { headers: { "cache-control": "no-store" } })
    })
  )
)
