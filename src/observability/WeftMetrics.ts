import { Metric, MetricBoundaries } from "effect"

/** One metric family as `/metrics` describes it in its HELP and TYPE lines. */
export interface MetricFamily {
  readonly name: string
  readonly type: "counter" | "gauge" | "histogram"
  readonly help: string
}

const families: Array<MetricFamily> = []

const counter = (name: `weft_${string}_total`, help: string) => {
  families.push({ name, type: "counter", help })
  return Metric.counter(name, { description: help, incremental: true })
}

const gauge = (name: `weft_${string}`, help: string) => {
  families.push({ name, type: "gauge", help })
  return Metric.gauge(name, { description: help })
}

const histogram = (name: `weft_${string}_seconds`, help: string, buckets: ReadonlyArray<number>) => {
  families.push({ name, type: "histogram", help })
  return Metric.histogram(name, MetricBoundaries.fromIterable(buckets), help)
}

/**
 * Every metric Weft exports, in Effect's one global metric registry. Request and engine metrics carry a `model` label
 * (added where they are updated); process metrics describe the whole process and carry none.
 */
export const WeftMetrics = {
  requests: counter("weft_requests_total", "HTTP requests answered, by endpoint, status code (499: the client went away first) and tenant (empty without a key)"),
  generations: counter(
    "weft_generations_total",
    "Generation requests that reached an end state, by outcome (completed, failed, timed_out, cancelled, rejected)"
  ),
  requestDuration: histogram(
    "weft_request_duration_seconds",
    "Time from admission to the end of an admitted generation, whatever its outcome",
    [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300]
  ),
  queueWait: histogram(
    "weft_queue_wait_seconds",
    "Time from admission until a request got a slot or left the queue (timed out or cancelled)",
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
  ),
  timeToFirstToken: histogram(
    "weft_time_to_first_token_seconds",
    "Time from admission to the first sampled token (queue wait and prefill included)",
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 60]
  ),
  interTokenLatency: histogram(
    "weft_inter_token_latency_seconds",
    "Time between consecutive generated tokens of one request",
    [0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5]
  ),
  promptTokens: counter("weft_prompt_tokens_total", "Prompt tokens of requests that got a slot (prefix-cache hits included), by tenant"),
  generationTokens: counter("weft_generation_tokens_total", "Tokens generated, by tenant"),
  buildInfo: gauge("weft_build_info", "Always 1: the llama.cpp binary each model runs on (binary: native or prebuilt) and its llama.cpp release"),
  rejections: counter("weft_rejections_total", "Requests turned away at admission, by reason"),
  timeouts: counter("weft_timeouts_total", "Requests ended by a stage limit, by stage (queue, first_token, total)"),
  cancellations: counter("weft_cancellations_total", "Requests cancelled, by reason (client, cancel, shutdown)"),
  requestsRunning: gauge("weft_requests_running", "Requests holding a slot"),
  requestsQueued: gauge("weft_requests_queued", "Requests waiting for a slot"),
  queueLimit: gauge("weft_queue_limit", "Requests that may wait for a slot before new ones are rejected"),
  // Not `weft_slots_total`: that suffix marks counters, and this is a gauge.
  slotsTotal: gauge("weft_slots_capacity", "Sequence slots (parallel sequences) of the context"),
  slotsFree: gauge("weft_slots_free", "Sequence slots not held by a request (empty or holding a cached prefix)"),
  kvCacheTokens: gauge("weft_kv_cache_tokens", "Tokens in the KV cache: running sequences plus cached prefixes"),
  kvCacheCachedTokens: gauge("weft_kv_cache_cached_tokens", "Tokens of cached prefixes kept in the KV cache for reuse"),
  kvCacheBytes: gauge("weft_kv_cache_bytes", "Estimated bytes of the KV cells in use"),
  kvCacheUsageRatio: gauge("weft_kv_cache_usage_ratio", "KV cache tokens over the context's capacity (slots × context size)"),
  prefixCacheLookups: counter("weft_prefix_cache_lookups_total", "Slot acquisitions that looked for a reusable cached prefix"),
  prefixCacheHits: counter("weft_prefix_cache_hits_total", "Lookups that reused a cached prefix"),
  prefixCacheHitTokens: counter("weft_prefix_cache_hit_tokens_total", "Prompt tokens served from cached prefixes instead of being evaluated"),
  prefixCacheEvictions: counter("weft_prefix_cache_evictions_total", "Cached prefixes evicted"),
  prefixCacheEvictedTokens: counter("weft_prefix_cache_evicted_tokens_total", "Tokens of evicted cached prefixes"),
  grammarCacheEntries: gauge("weft_grammar_cache_entries", "JSON-schema grammar verdicts (built grammars or parse failures) held in the grammar cache"),
  grammarCacheBytes: gauge("weft_grammar_cache_bytes", "Estimated bytes held by the grammar cache (keys and grammar texts)"),
  grammarCacheHits: counter("weft_grammar_cache_hits_total", "JSON-schema grammar lookups answered from the grammar cache"),
  grammarCacheMisses: counter("weft_grammar_cache_misses_total", "JSON-schema grammar lookups that had to build the grammar"),
  grammarCacheEvictions: counter("weft_grammar_cache_evictions_total", "Grammar cache entries evicted to stay within its entry and byte bounds"),
  alertsFiring: gauge("weft_alerts_firing", "1 while the alert rule named by the alert label is firing, else 0"),
  auditDropped: counter("weft_audit_dropped_total", "Audit records dropped because the audit log's write queue was full"),
  memoryLimit: gauge("weft_memory_limit_bytes", "The memory budget (--memory-limit)"),
  memoryCommitted: gauge("weft_memory_committed_bytes", "Memory committed to loaded models and contexts, from node-llama-cpp's estimates"),
  memoryReserved: gauge("weft_memory_reserved_bytes", "Memory committed by one holder (a model, an adapter context), by part (weights, context)"),
  memoryUnderPressure: gauge("weft_memory_under_pressure", "1 while new requests are refused for memory pressure, else 0"),
  upstreamRequests: counter("weft_upstream_requests_total", "Attempts sent to a routed model's deployments, by model, deployment and outcome (success, retried, failed, rejected)"),
  upstreamRetries: counter("weft_upstream_retries_total", "Attempts retried after a failure, by model, deployment and reason (connect, reset, timeout, rate_limited, server_error, unavailable)"),
  upstreamFallbacks: counter("weft_upstream_fallbacks_total", "Requests answered by a fallback model, by model and fallback"),
  upstreamBreakerTransitions: counter("weft_upstream_breaker_transitions_total", "Circuit breaker state changes, by deployment and the state entered (open, half_open, closed)"),
  upstreamBreakerState: gauge("weft_upstream_breaker_state", "A deployment's circuit breaker: 0 closed, 1 half-open, 2 open"),
  upstreamRequestDuration: histogram(
    "weft_upstream_request_duration_seconds",
    "Time from sending an attempt to a deployment until its answer ended (its stream included), by model and deployment",
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
  ),
  upstreamPoolConnections: gauge("weft_upstream_pool_connections", "Connections open to an upstream, by deployment"),
  upstreamPoolFree: gauge("weft_upstream_pool_free_connections", "Open connections to an upstream that are idle, by deployment"),
  upstreamPoolQueued: gauge("weft_upstream_pool_queued", "Requests waiting for a connection to an upstream, by deployment"),
  upstreamPoolSent: gauge("weft_upstream_pool_requests_sent", "Requests sent on an upstream's pool since start, by deployment"),
  upstreamPoolReused: gauge("weft_upstream_pool_requests_reused", "Requests that reused an open connection of an upstream's pool since start, by deployment"),
  residentMemory: gauge("weft_process_resident_memory_bytes", "Resident set size of the process"),
  heapUsed: gauge("weft_process_heap_used_bytes", "V8 heap in use"),
  heapTotal: gauge("weft_process_heap_total_bytes", "V8 heap allocated"),
  externalMemory: gauge("weft_process_external_memory_bytes", "Memory of C++ objects bound to JavaScript objects (native buffers)"),
  eventLoopLag: gauge("weft_process_event_loop_lag_seconds", "Mean event-loop delay since the previous scrape"),
  eventLoopLagP99: gauge("weft_process_event_loop_lag_p99_seconds", "99th percentile of event-loop delay since the previous scrape"),
  cpuSeconds: counter("weft_process_cpu_seconds_total", "User and system CPU time of the process"),
  startTime: gauge("weft_process_start_time_seconds", "Start time of the process since the Unix epoch")
} as const

/** Every family above, in the order `/metrics` lists them. */
export const weftMetricFamilies: ReadonlyArray<MetricFamily> = families
