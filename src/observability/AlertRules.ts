import { Schema } from "effect"
import { requiredDuration } from "../config/SettingGrammar.js"
import type { ServerSample } from "./ServerSample.js"

/** The metrics a rule can watch; per-model values are the worst model's. */
export const alertMetrics = [
  "queue_length",
  "queue_ratio",
  "kv_usage_ratio",
  "error_rate",
  "ttft_p95_ms",
  "event_loop_lag_ms",
  "memory_rss_bytes",
  "heap_used_bytes"
] as const

export type AlertMetric = (typeof alertMetrics)[number]

const Duration = requiredDuration("30s, 5m or 0").schema

/** One rule as the config file writes it: `metric op threshold`, held for `for`, at a severity. */
export const AlertRule = Schema.Struct({
  name: Schema.String.pipe(Schema.pattern(/^[A-Za-z][A-Za-z0-9_]{0,63}$/)),
  metric: Schema.Literal(...alertMetrics),
  op: Schema.Literal(">", ">=", "<", "<="),
  threshold: Schema.Number,
  for: Schema.optionalWith(Duration, { default: () => 0 }),
  severity: Schema.optionalWith(Schema.Literal("info", "warning", "critical"), { default: () => "warning" as const }),
  summary: Schema.optional(Schema.String)
})
export interface AlertRule extends Schema.Schema.Type<typeof AlertRule> {}

/** The `alerts` object of the config file. */
export const AlertSettings = Schema.Struct({
  /** Rules added to (or, by name, replacing) the built-in ones. */
  rules: Schema.optionalWith(Schema.Array(AlertRule), { default: () => [] }),
  /** Whether the built-in rules apply. */
  defaults: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  /** URLs that get a JSON POST for each firing and resolved alert. */
  webhooks: Schema.optionalWith(Schema.Array(Schema.String.pipe(Schema.pattern(/^https?:\/\/\S+$/))), { default: () => [] }),
  /** A still-firing alert is notified again after this long. */
  repeatInterval: Schema.optionalWith(Duration, { default: () => 4 * 3_600_000 }),
  /** How often rules are evaluated. */
  evaluationInterval: Schema.optionalWith(Duration, { default: () => 5_000 }),
  /** Over how long `error_rate` is measured. */
  errorRateWindow: Schema.optionalWith(Duration, { default: () => 60_000 })
})
export interface AlertSettings extends Schema.Schema.Type<typeof AlertSettings> {}

/** The settings with nothing configured: the built-in rules, no webhooks. */
export const defaultAlertSettings: AlertSettings = Schema.decodeUnknownSync(AlertSettings)({})

/** The built-in rules: queue saturation, KV pressure, error rate and event-loop lag. */
export const builtInAlertRules: ReadonlyArray<AlertRule> = [
  { name: "QueueSaturated", metric: "queue_ratio", op: ">=", threshold: 0.9, for: 30_000, severity: "warning", summary: "The wait queue is at least 90% full" },
  { name: "KvCachePressure", metric: "kv_usage_ratio", op: ">=", threshold: 0.95, for: 60_000, severity: "warning", summary: "KV cache use is at least 95% of capacity" },
  { name: "HighErrorRate", metric: "error_rate", op: ">", threshold: 0.1, for: 60_000, severity: "critical", summary: "More than 10% of finished requests failed or timed out" },
  { name: "EventLoopLag", metric: "event_loop_lag_ms", op: ">", threshold: 200, for: 30_000, severity: "warning", summary: "The event loop lags more than 200 ms" }
]

/** The rules in force: the built-in ones (unless turned off), with configured rules of the same name replacing them. */
export const rulesOf = (settings: AlertSettings): ReadonlyArray<AlertRule> => {
  const configured = new Set(settings.rules.map((rule) => rule.name))
  const builtIn = settings.defaults ? builtInAlertRules.filter((rule) => !configured.has(rule.name)) : []
  return [...builtIn, ...settings.rules]
}

/** Requests that ended, and how many of them badly (failed or timed out), since start; summed over models. */
export const finishedCounts = (sample: ServerSample) => {
  let total = 0
  let errors = 0
  for (const model of sample.models) {
    const finished = model.stats?.requests.finished
    if (finished === undefined) continue
    errors += finished.failed + finished.timed_out
    total += finished.completed + finished.failed + finished.timed_out + finished.cancelled
  }
  return { total, errors }
}

const worst = (values: ReadonlyArray<number | null | undefined>): number => {
  const present = values.filter((value): value is number => typeof value === "number" && Number.isFinite(value))
  return present.length === 0 ? 0 : Math.max(...present)
}

/** The value of `metric` in `sample`; `errorRate` is measured by the caller, over its window. */
export const metricValue = (metric: AlertMetric, sample: ServerSample, errorRate: number): number => {
  const stats = sample.models.flatMap((model) => (model.stats === undefined ? [] : [model.stats]))
  switch (metric) {
    case "queue_length":
      return stats.reduce((sum, one) => sum + one.requests.queued, 0)
    case "queue_ratio":
      return worst(stats.map((one) => (one.requests.queueLimit === 0 ? 0 : one.requests.queued / one.requests.queueLimit)))
    case "kv_usage_ratio":
      return worst(stats.map((one) => one.kvCache.usageRatio))
    case "error_rate":
      return errorRate
    case "ttft_p95_ms":
      return worst(stats.map((one) => one.latencyMs.timeToFirstToken.p95))
    case "event_loop_lag_ms":
      return sample.process.eventLoopLagMs
    case "memory_rss_bytes":
      return sample.process.residentMemoryBytes
    case "heap_used_bytes":
      return sample.process.heapUsedBytes
  }
}

/** Whether `value` meets the rule's condition. */
export const conditionHolds = (rule: AlertRule, value: number): boolean => {
  switch (rule.op) {
    case ">":
      return value > rule.threshold
    case ">=":
      return value >= rule.threshold
    case "<":
      return value < rule.threshold
    case "<=":
      return value <= rule.threshold
  }
}
