import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Metric, Option } from "effect"
import { ModelRouter } from "../upstream/ModelRouter.js"
import { ProcessMetrics } from "../observability/ProcessMetrics.js"
import { encodePrometheusText, prometheusContentType } from "../observability/PrometheusText.js"
import { weftMetricFamilies, WeftMetrics } from "../observability/WeftMetrics.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { MemoryManager, sampleMemoryMetrics } from "../memory/MemoryManager.js"

const noStore = { "cache-control": "no-store" }

/** `GET /metrics`: every Weft metric in the Prometheus text format; a model's engine gauges appear once it is loaded. */
const metrics = Effect.gen(function*() {
  yield* Effect.flatMap(ProcessMetrics, (process) => process.sample())
  yield* Effect.flatMap(MemoryManager, sampleMemoryMetrics)
  const engines = yield* Effect.flatMap(ModelRegistry, (registry) => registry.engines)
  yield* Effect.forEach(engines, (engine) => engine.metrics.sample(), { discard: true })
  yield* Effect.forEach(engines, ({ backend: { info } }) =>
    info.binary === undefined ? Effect.void : Metric.set(
      WeftMetrics.buildInfo.pipe(Metric.tagged("model", info.id), Metric.tagged("binary", info.binary.kind), Metric.tagged("release", info.binary.release)),
      1
    ), { discard: true })
  yield* Effect.flatMap(Effect.serviceOption(ModelRouter), Option.match({ onNone: () => Effect.void, onSome: (router) => router.sample }))
  const text = encodePrometheusText(weftMetricFamilies, yield* Metric.snapshot)
  return HttpServerResponse.text(text, { contentType: prometheusContentType, headers: noStore })
})

/**
 * `GET /admin/stats`: latency percentiles, rates, slot, queue and KV state as JSON; 503 while a model loads. With one
 * model its numbers are at the top level; with several, under `models` by id.
 */
const adminStats = Effect.gen(function*() {
  const process = yield* Effect.flatMap(ProcessMetrics, (metrics) => metrics.sample())
  const models = yield* Effect.flatMap(ModelRegistry, (registry) => registry.models)
  const notReady = models.find((model) => model.state._tag !== "Ready")
  if (notReady !== undefined || models.length === 0) {
    return HttpServerResponse.unsafeJson(
      { status: notReady === undefined || notReady.state._tag === "Loading" ? "loading" : "error", process },
      { status: 503, headers: noStore }
    )
  }
  const byModel = yield* Effect.forEach(models, (model) =>
    model.state._tag === "Ready"
      ? Effect.map(model.state.engine.metrics.adminStats(), (stats) => [model.id ?? "", stats] as const)
      : Effect.dieMessage("unreachable: every model is ready"))
  const draining = byModel.some(([, stats]) => stats.requests.draining)
  const status = draining ? "draining" : "ok"
  const binaries = Object.fromEntries(models.flatMap((model) =>
    model.state._tag === "Ready" && model.state.engine.backend.info.binary !== undefined ? [[model.id ?? "", model.state.engine.backend.info.binary]] : []
  ))
  const body = byModel.length === 1
    ? { status, ...byModel[0]![1], binary: Object.values(binaries)[0], process }
    : { status, models: Object.fromEntries(byModel), binaries, process }
  return HttpServerResponse.unsafeJson(body, { headers: noStore })
})

/** `/metrics` and `/admin/stats`. */
export const observabilityRoutes = HttpRouter.empty.pipe(
  HttpRouter.get("/metrics", metrics),
  HttpRouter.get("/admin/stats", adminStats)
)
