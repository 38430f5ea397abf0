import type { HttpServerResponse } from "@effect/platform"
import { Clock, Config, Context, Effect, Either, HashSet, Layer, Metric, Option, Ref, Schema } from "effect"
import type { Redacted, Scope } from "effect"
import { isLocalDeployment, isRoutedModel, localEngineId } from "../config/ModelsConfig.js"
import type { ModelConfig, ModelsConfig } from "../config/ModelsConfig.js"
import { ModelLoading } from "../host/HostErrors.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import type { Engine } from "../host/LocalEngine.js"
import { WeftMetrics } from "../observability/WeftMetrics.js"
import { QueueFull, ShuttingDown } from "../scheduler/SchedulerErrors.js"
import { breakerGaugeValue, defaultBreakerSettings, makeCircuitBreaker } from "./CircuitBreaker.js"
import type { Admission, BreakerSettings, BreakerStateName, CircuitBreaker } from "./CircuitBreaker.js"
import { classifyFault, defaultRetrySettings, retrySchedule } from "./RetryPolicy.js"
import type { AttemptFault, RetryReason, RetrySettings } from "./RetryPolicy.js"
import { nextEwma, pickDeployment } from "./RoutingStrategy.js"
import type { Candidate, RoutingStrategy } from "./RoutingStrategy.js"
import { DeploymentsSaturated, ModelUnavailable, UpstreamFailed } from "./UpstreamErrors.js"
import type { ForwardHooks, UpstreamTarget } from "./UpstreamForwarder.js"
import { defaultPoolSettings, makeUpstreamPool } from "./UpstreamPool.js"
import type { PoolStats, UpstreamPool } from "./UpstreamPool.js"

/** Where one attempt of a routed request goes; `model` is the Weft model id it answers as (a fallback's, if so). */
export type RouteTarget =
  | { readonly _tag: "Local"; readonly model: string; readonly deployment: string; readonly engine: Engine }
  | { readonly _tag: "Upstream"; readonly model: string; readonly deployment: string; readonly upstream: UpstreamTarget }

/** What one attempt answers: the response, and whether it is a stream that reports its own end through the hooks. */
export interface RoutedAnswer {
  readonly response: HttpServerResponse.HttpServerResponse
  readonly streaming: boolean
}

/** Runs one attempt on a target; the hooks report its first byte and a stream's end. */
export type AttemptRun<E, R> = (target: RouteTarget, hooks: Omit<ForwardHooks, "usage">) => Effect.Effect<RoutedAnswer, E, R>

/** No deployment of a model may take a request now; `waitMs` is how long until one that is backing off may again. */
class NoDeploymentAvailable extends Schema.TaggedError<NoDeploymentAvailable>()("NoDeploymentAvailable", {
  model: Schema.String,
  saturated: Schema.Boolean,
  waitMs: Schema.optional(Schema.Number)
}) {}

/** One deployment's counters; `inFlight` counts the router's own requests (a local engine reports its queue itself). */
interface DeploymentCounters {
  readonly inFlight: number
  readonly picked: number
  readonly latencyMs: number | undefined
  /** Until when it is backed off after a 429 or a full queue. */
  readonly backoffUntil: number
  readonly successes: number
  readonly failures: Readonly<Record<string, number>>
  readonly retries: number
}

interface Deployment {
  readonly name: string
  readonly index: number
  readonly weight: number
  readonly breaker: CircuitBreaker
  readonly counters: Ref.Ref<DeploymentCounters>
  readonly kind:
    | { readonly _tag: "Local"; readonly engineId: string }
    | { readonly _tag: "Upstream"; readonly url: string; readonly target: UpstreamTarget; readonly pool: UpstreamPool; readonly maxInFlight: number }
}

interface Route {
  readonly model: string
  readonly strategy: RoutingStrategy
  readonly fallbacks: ReadonlyArray<string>
  readonly retry: RetrySettings
  readonly deployments: ReadonlyArray<Deployment>
  /** Held while a deployment is picked and admitted, so two requests cannot both take the last half-open probe. */
  readonly picking: Effect.Semaphore
}

/** One deployment as `GET /admin/upstreams` shows it. */
export interface DeploymentView {
  readonly model: string
  readonly deployment: string
  readonly kind: "local" | "upstream"
  readonly url?: string
  readonly breaker: BreakerStateName
  readonly inFlight: number
  readonly latencyEwmaMs: number | null
  readonly successes: number
  readonly failures: Readonly<Record<string, number>>
  readonly retries: number
  readonly backingOffMs: number
  readonly pool?: PoolStats & { readonly reuseRatio: number | null }
}

const byDeployment = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>, model: string, deployment: string) =>
  Metric.tagged(Metric.tagged(metric, "model", model), "deployment", deployment)

/** `defaults` with the settings the config file gives (its absent keys are `undefined`). */
const withDefaults = <A extends object>(defaults: A, given: { readonly [K in keyof A]?: A[K] | undefined } | undefined): A =>
  ({ ...defaults, ...Object.fromEntries(Object.entries(given ?? {}).filter(([, value]) => value !== undefined)) })

/** The fault behind a failed attempt, when it is one a retry might get past; otherwise the request's own fault. */
const faultOf = (error: unknown): AttemptFault | undefined => {
  if (error instanceof UpstreamFailed) {
    switch (error.kind) {
      case "connect":
        return { _tag: "Connect" }
      case "timeout":
        return { _tag: "Timeout" }
      case "status":
        return { _tag: "Status", status: error.status ?? 502 }
      case "reset":
      case "protocol":
        return { _tag: "Reset" }
    }
  }
  if (error instanceof QueueFull) return { _tag: "LocalUnavailable", saturated: true }
  if (error instanceof ModelLoading || error instanceof ShuttingDown) return { _tag: "LocalUnavailable", saturated: false }
  return undefined
}

/** How long a deployment that answered 429 without `Retry-After` (or whose queue was full) is left alone. */
const defaultBackoffMs = 1_000

const emptyCounters: DeploymentCounters = { inFlight: 0, picked: 0, latencyMs: undefined, backoffUntil: 0, successes: 0, failures: {}, retries: 0 }

const makeDeployment = (modelId: string, model: ModelConfig, index: number, breakerSettings: BreakerSettings) =>
  Effect.gen(function*() {
    const config = model.deployments[index]!
    const name = localEngineId(modelId, model, index)
    const breaker = yield* makeCircuitBreaker(name, breakerSettings)
    const counters = yield* Ref.make(emptyCounters)
    if (isLocalDeployment(config)) {
      return { name, index, weight: 1, breaker, counters, kind: { _tag: "Local", engineId: name } } satisfies Deployment
    }
    const connections = config.pool?.connections ?? defaultPoolSettings.connections
    const origin = new URL(config.url).origin
    const pool = yield* makeUpstreamPool(origin, {
      connections,
      keepAliveMs: config.pool?.keepAliveMs ?? defaultPoolSettings.keepAliveMs,
      connectMs: config.timeouts?.connectMs ?? 5_000
    })
    const apiKey: Option.Option<Redacted.Redacted> = config.apiKeyEnv === undefined
      ? Option.none()
      : yield* Config.option(Config.redacted(config.apiKeyEnv)).pipe(Effect.orDie)
    const target: UpstreamTarget = {
      name,
      baseUrl: config.url.replace(/\/+$/, ""),
      model: config.model,
      apiKey,
      pool,
      firstByteMs: config.timeouts?.firstByteMs ?? 60_000,
      totalMs: config.timeouts?.totalMs ?? 600_000
    }
    return {
      name,
      index,
      weight: config.weight ?? 1,
      breaker,
      counters,
      kind: { _tag: "Upstream", url: config.url, target, pool, maxInFlight: config.pool?.maxInFlight ?? connections * 2 }
    } satisfies Deployment
  })

const makeRoute = (modelId: string, model: ModelConfig) =>
  Effect.gen(function*() {
    const breakerSettings = withDefaults(defaultBreakerSettings, model.breaker)
    const deployments = yield* Effect.forEach(model.deployments, (_, index) => makeDeployment(modelId, model, index, breakerSettings))
    return {
      model: modelId,
      strategy: model.routing ?? "round-robin",
      fallbacks: model.fallbacks ?? [],
      retry: withDefaults(defaultRetrySettings, model.retry),
      deployments,
      picking: yield* Effect.makeSemaphore(1)
    } satisfies Route
  })

export interface ModelRouterShape {
  /** Whether requests for `model` go through the router (rather than straight to one local engine). */
  readonly routes: (model: string) => boolean
  /** The routed model ids, for `/v1/models`. */
  readonly modelIds: ReadonlyArray<string>
  /**
   * Runs a request for `model` on one of its deployments, picked by its strategy, retrying failures a retry may get
   * past (on the same or another deployment, never one whose breaker is open) and then its fallbacks in order.
   * `affinityKey` (a session id or user) keeps a session on one deployment while that stays healthy.
   */
  readonly route: <E, R>(
    model: string,
    affinityKey: string | undefined,
    run: AttemptRun<E, R>
  ) => Effect.Effect<HttpServerResponse.HttpServerResponse, E | ModelUnavailable | DeploymentsSaturated, R>
  /** Every deployment with its breaker, load, latency, errors and pool. */
  readonly view: Effect.Effect<ReadonlyArray<DeploymentView>>
  /** Sets the breaker and pool gauges for a `/metrics` scrape. */
  readonly sample: Effect.Effect<void>
}

/**
 * Routes the config file's routed models (upstream deployments, several deployments, fallbacks) to their deployments:
 * load balancing, retries by error class, a circuit breaker per deployment, fallbacks. Local deployments are the
 * `ModelRegistry`'s engines; upstream ones are forwarded over a pooled HTTP client per origin.
 */
export class ModelRouter extends Context.Tag("weft/ModelRouter")<ModelRouter, ModelRouterShape>() {
  static layer = (models: ModelsConfig): Layer.Layer<ModelRouter, never, ModelRegistry> =>
    Layer.scoped(
      ModelRouter,
      Effect.gen(function*() {
        const registry = yield* ModelRegistry
        const routes = new Map<string, Route>()
        // Fallback targets are routed too, even when they are a plain local model of their own.
        for (const [modelId, model] of Object.entries(models)) routes.set(modelId, yield* makeRoute(modelId, model))
        const routed = Object.entries(models).filter(([, model]) => isRoutedModel(model)).map(([modelId]) => modelId)

        const localEngine = (engineId: string) => Effect.either(registry.resolve(engineId))

        /** Picks and admits a deployment of `route` that has not failed this request yet, if one can take it. */
        const pick = (route: Route, tried: HashSet.HashSet<string>, affinityKey: string | undefined) =>
          route.picking.withPermits(1)(Effect.gen(function*() {
            const now = yield* Clock.currentTimeMillis
            const states = yield* Effect.forEach(route.deployments, (deployment) =>
              Effect.gen(function*() {
                const counters = yield* Ref.get(deployment.counters)
                const admits = yield* deployment.breaker.admits(now)
                if (deployment.kind._tag === "Upstream") {
                  return { deployment, counters, admits, engine: undefined, inFlight: counters.inFlight, saturated: counters.inFlight >= deployment.kind.maxInFlight }
                }
                const engine = yield* localEngine(deployment.kind.engineId)
                if (Either.isLeft(engine)) return { deployment, counters, admits: false, engine: undefined, inFlight: 0, saturated: false }
                const stats = yield* engine.right.scheduler.stats
                return {
                  deployment,
                  counters,
                  admits: admits && !stats.draining,
                  engine: engine.right,
                  inFlight: stats.running + stats.queued,
                  saturated: stats.queued >= stats.queueLimit && stats.slots.free === 0
                }
              }))
            const open = states.filter((state) => state.admits && state.counters.backoffUntil <= now && !state.saturated)
            const fresh = open.filter((state) => !HashSet.has(tried, state.deployment.name))
            const pool = fresh.length > 0 ? fresh : open
            const candidates: Array<Candidate> = pool.map((state) => ({
              index: state.deployment.index,
              name: state.deployment.name,
              weight: state.deployment.weight,
              inFlight: state.inFlight,
              picked: state.counters.picked,
              latencyMs: state.counters.latencyMs
            }))
            const chosen = pickDeployment(route.strategy, candidates, affinityKey)
            if (chosen === undefined) {
              const busy = states.filter((state) => state.admits && (state.saturated || state.counters.backoffUntil > now))
              const waits = busy.filter((state) => state.counters.backoffUntil > now).map((state) => state.counters.backoffUntil - now)
              return yield* new NoDeploymentAvailable({
                model: route.model,
                saturated: busy.length > 0,
                waitMs: waits.length === 0 ? undefined : Math.min(...waits)
              })
            }
            const state = states.find((one) => one.deployment.index === chosen.index)!
            const admission = yield* state.deployment.breaker.admit
            // Checked under the same permit a moment ago; a breaker is only ever admitted to here.
            if (admission === undefined) return yield* new NoDeploymentAvailable({ model: route.model, saturated: false })
            yield* Ref.update(state.deployment.counters, (counters) => ({ ...counters, inFlight: counters.inFlight + 1, picked: counters.picked + 1 }))
            const target: RouteTarget = state.deployment.kind._tag === "Upstream"
              ? { _tag: "Upstream", model: route.model, deployment: state.deployment.name, upstream: state.deployment.kind.target }
              : { _tag: "Local", model: route.model, deployment: state.deployment.name, engine: state.engine! }
            return { deployment: state.deployment, admission, target, startedAt: now } as const
          }))

        /** One attempt on one deployment, its result recorded once in the breaker, the counters and the metrics. */
        const attempt = <E, R>(route: Route, tried: Ref.Ref<HashSet.HashSet<string>>, affinityKey: string | undefined, run: AttemptRun<E, R>) =>
          Effect.gen(function*() {
            const lease = yield* pick(route, yield* Ref.get(tried), affinityKey)
            const { deployment, admission } = lease
            yield* Ref.update(tried, HashSet.add(deployment.name))
            const settled = yield* Ref.make(false)
            const count = (outcome: string) => Metric.increment(Metric.tagged(byDeployment(WeftMetrics.upstreamRequests, route.model, deployment.name), "outcome", outcome))
            /** Records how the attempt ended: `failed` true counts against the breaker, undefined says nothing of it. */
            const finish = (failed: boolean | undefined, outcome: string, update: (counters: DeploymentCounters) => DeploymentCounters = (counters) => counters) =>
              Effect.flatMap(Ref.getAndSet(settled, true), (already) =>
                already ? Effect.void : Effect.gen(function*() {
                  const now = yield* Clock.currentTimeMillis
                  yield* deployment.breaker.settle(admission, failed)
                  yield* Ref.update(deployment.counters, (counters) => update({ ...counters, inFlight: Math.max(0, counters.inFlight - 1) }))
                  yield* count(outcome)
                  yield* Metric.update(byDeployment(WeftMetrics.upstreamRequestDuration, route.model, deployment.name), (now - lease.startedAt) / 1000)
                }))
            const succeeded = finish(false, "success", (counters) => ({ ...counters, successes: counters.successes + 1 }))
            const hooks = {
              firstByte: Effect.flatMap(Clock.currentTimeMillis, (now) =>
                Ref.update(deployment.counters, (counters) => ({ ...counters, latencyMs: nextEwma(counters.latencyMs, now - lease.startedAt) }))),
              streamEnded: (failed: boolean | undefined) =>
                failed === undefined
                  ? finish(undefined, "cancelled")
                  : failed
                  ? finish(true, "failed", (counters) => ({ ...counters, failures: { ...counters.failures, mid_stream: (counters.failures["mid_stream"] ?? 0) + 1 } }))
                  : succeeded
            }
            const answer = yield* run(lease.target, hooks).pipe(
              Effect.onInterrupt(() => finish(undefined, "cancelled")),
              Effect.tapError((error) =>
                Effect.gen(function*() {
                  const fault = faultOf(error)
                  const verdict = fault === undefined ? undefined : classifyFault(fault)
                  if (verdict === undefined || verdict._tag === "Final") return yield* finish(undefined, "rejected")
                  const now = yield* Clock.currentTimeMillis
                  const wait = error instanceof UpstreamFailed ? error.retryAfterMs : undefined
                  yield* finish(verdict.breakerFailure ? true : undefined, "retried", (counters) => ({
                    ...counters,
                    retries: counters.retries + 1,
                    failures: { ...counters.failures, [verdict.reason]: (counters.failures[verdict.reason] ?? 0) + 1 },
                    backoffUntil: verdict.reason === "rate_limited" ? now + (wait ?? defaultBackoffMs) : counters.backoffUntil
                  }))
                  yield* Metric.increment(Metric.tagged(byDeployment(WeftMetrics.upstreamRetries, route.model, deployment.name), "reason", verdict.reason satisfies RetryReason))
                  yield* Effect.logInfo("upstream attempt failed; retrying").pipe(
                    Effect.annotateLogs({ model: route.model, deployment: deployment.name, reason: verdict.reason, error: error instanceof UpstreamFailed ? error.message : String((error as { _tag?: unknown })._tag) })
                  )
                })
              )
            )
            if (!answer.streaming) yield* succeeded
            return answer.response
          })

        /** Whether a failure of a whole model (its retries spent) lets the next fallback try. */
        const exhausted = (error: unknown): error is NoDeploymentAvailable | UpstreamFailed =>
          error instanceof NoDeploymentAvailable || (faultOf(error) !== undefined && classifyFault(faultOf(error)!)._tag === "Retry")

        const routeModel = <E, R>(route: Route, affinityKey: string | undefined, run: AttemptRun<E, R>) =>
          Effect.gen(function*() {
            const tried = yield* Ref.make(HashSet.empty<string>())
            return yield* attempt(route, tried, affinityKey, run).pipe(
              Effect.retry({
                schedule: retrySchedule<E | NoDeploymentAvailable>(route.retry, (error) =>
                  error instanceof NoDeploymentAvailable ? (error.waitMs ?? 0) : 0),
                // A model with nothing to pick waits only for a deployment that is backing off for less than the cap.
                while: (error) =>
                  error instanceof NoDeploymentAvailable
                    ? error.waitMs !== undefined && error.waitMs <= route.retry.maxDelayMs
                    : exhausted(error)
              })
            )
          })

        const route = <E, R>(model: string, affinityKey: string | undefined, run: AttemptRun<E, R>) => {
          const first = routes.get(model)!
          const chain = [model, ...first.fallbacks]
          /** `busyForMs`: set while every model tried so far was busy rather than down, to how long until one frees up. */
          const tryFrom = (at: number, busyForMs: number | undefined): Effect.Effect<HttpServerResponse.HttpServerResponse, E | ModelUnavailable | DeploymentsSaturated, R> => {
            if (at >= chain.length) {
              return busyForMs !== undefined
                ? Effect.fail(new DeploymentsSaturated({ model, retryAfterSeconds: Math.max(1, Math.ceil(busyForMs / 1000)) }))
                : Effect.fail(new ModelUnavailable({ model, tried: chain }))
            }
            const current = routes.get(chain[at]!)!
            return routeModel(current, affinityKey, run).pipe(
              Effect.tap(() => at === 0 ? Effect.void : Metric.increment(Metric.tagged(Metric.tagged(WeftMetrics.upstreamFallbacks, "model", model), "fallback", current.model))),
              Effect.catchIf(exhausted, (error) =>
                Effect.zipRight(
                  Effect.logWarning("model unavailable; trying its next fallback").pipe(Effect.annotateLogs({ model: current.model, next: chain[at + 1] ?? null })),
                  tryFrom(
                    at + 1,
                    error instanceof NoDeploymentAvailable && error.saturated && (at === 0 || busyForMs !== undefined)
                      ? Math.min(busyForMs ?? Infinity, error.waitMs ?? defaultBackoffMs)
                      : undefined
                  )
                ))
            ) as Effect.Effect<HttpServerResponse.HttpServerResponse, E | ModelUnavailable | DeploymentsSaturated, R>
          }
          return tryFrom(0, undefined)
        }

        const view = Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const rows: Array<DeploymentView> = []
          for (const current of routes.values()) {
            for (const deployment of current.deployments) {
              const counters = yield* Ref.get(deployment.counters)
              const breaker = yield* deployment.breaker.current
              const base = {
                model: current.model,
                deployment: deployment.name,
                breaker: breaker._tag,
                inFlight: counters.inFlight,
                latencyEwmaMs: counters.latencyMs === undefined ? null : Math.round(counters.latencyMs * 10) / 10,
                successes: counters.successes,
                failures: counters.failures,
                retries: counters.retries,
                backingOffMs: Math.max(0, counters.backoffUntil - now)
              }
              if (deployment.kind._tag === "Local") {
                rows.push({ ...base, kind: "local" })
              } else {
                const pool = yield* deployment.kind.pool.stats
                rows.push({ ...base, kind: "upstream", url: deployment.kind.url, pool: { ...pool, reuseRatio: pool.requests === 0 ? null : pool.reused / pool.requests } })
              }
            }
          }
          return rows
        })

        const sample = Effect.flatMap(view, (rows) =>
          Effect.forEach(rows, (row) =>
            Effect.gen(function*() {
              const tag = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) => Metric.tagged(metric, "deployment", row.deployment)
              yield* Metric.set(tag(WeftMetrics.upstreamBreakerState), breakerGaugeValue(row.breaker))
              if (row.pool === undefined) return
              yield* Metric.set(tag(WeftMetrics.upstreamPoolConnections), row.pool.connected)
              yield* Metric.set(tag(WeftMetrics.upstreamPoolFree), row.pool.free)
              yield* Metric.set(tag(WeftMetrics.upstreamPoolQueued), row.pool.queued)
              yield* Metric.set(tag(WeftMetrics.upstreamPoolSent), row.pool.requests)
              yield* Metric.set(tag(WeftMetrics.upstreamPoolReused), row.pool.reused)
            }), { discard: true }))

        return {
          routes: (model) => routed.includes(model),
          modelIds: routed,
          route,
          view,
          sample
        } satisfies ModelRouterShape
      })
    )
}

export type { Admission, Scope }
