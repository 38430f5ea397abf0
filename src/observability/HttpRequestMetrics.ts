import { Effect, Metric, MetricLabel } from "effect"
import { WeftMetrics } from "./WeftMetrics.js"

const fixedEndpoints = new Set([
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/embeddings",
  "/tokenize",
  "/detokenize",
  "/v1/models",
  "/v1/responses",
  "/v1/sessions",
  "/health",
  "/metrics",
  "/admin/stats"
])

/** Routes whose last segment is an id: one label value each, however many ids there are. */
const parameterised: ReadonlyArray<readonly [string, string]> = [
  ["/v1/models/", "/v1/models/{model}"],
  ["/v1/responses/", "/v1/responses/{response_id}"],
  ["/v1/sessions/", "/v1/sessions/{session_id}"]
]

/**
 * The `endpoint` label of a request: its route, never its raw path, so ids and unknown paths cannot grow the number of
 * series without bound. Paths the server does not route are `unmatched`.
 */
export const endpointOf = (path: string, routed: boolean): string => {
  if (!routed) return "unmatched"
  if (fixedEndpoints.has(path)) return path
  for (const [prefix, endpoint] of parameterised) if (path.startsWith(prefix)) return endpoint
  return "other"
}

/** Counts one answered HTTP request in `weft_requests_total`. */
export const countHttpRequest = (options: {
  readonly model: string
  readonly endpoint: string
  readonly status: number
}): Effect.Effect<void> =>
  Metric.increment(
    Metric.taggedWithLabels(WeftMetrics.requests, [
      MetricLabel.make("model", options.model),
      MetricLabel.make("endpoint", options.endpoint),
      MetricLabel.make("status", String(options.status))
    ])
  )
