import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Metric } from "effect"
import { ProcessMetrics } from "../observability/ProcessMetrics.js"
import { encodePrometheusText, prometheusContentType } from "../observability/PrometheusText.js"
import { weftMetricFamilies } from "../observability/WeftMetrics.js"
import { ModelHost } from "./ModelHost.js"

const noStore = { "cache-control": "no-store" }

/** `GET /metrics`: every Weft metric in the Prometheus text format; engine gauges appear once the model is loaded. */
const metrics = Effect.gen(function*() {
  yield* Effect.flatMap(ProcessMetrics, (process) => process.sample())
  const state = yield* Effect.flatMap(ModelHost, (host) => host.state)
  if (state._tag === "Ready") yield* state.engine.metrics.sample()
  const text = encodePrometheusText(weftMetricFamilies, yield* Metric.snapshot)
  return HttpServerResponse.text(text, { contentType: prometheusContentType, headers: noStore })
})

/** `GET /admin/stats`: latency percentiles, rates, slot, queue and KV state as JSON; 503 while the model loads. */
const adminStats = Effect.gen(function*() {
  const process = yield* Effect.flatMap(ProcessMetrics, (metrics) => metrics.sample())
  const state = yield* Effect.flatMap(ModelHost, (host) => host.state)
  if (state._tag !== "Ready") {
    return HttpServerResponse.unsafeJson(
      { status: state._tag === "Loading" ? "loading" : "error", process },
      { status: 503, headers: noStore }
    )
  }
  const stats = yield* state.engine.metrics.adminStats()
  return HttpServerResponse.unsafeJson({ status: stats.requests.draining ? "draining" : "ok", ...stats, process }, { headers: noStore })
})

/** `/metrics` and `/admin/stats`. */
export const observabilityRoutes = HttpRouter.empty.pipe(
  HttpRouter.get("/metrics", metrics),
  HttpRouter.get("/admin/stats", adminStats)
)
