import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Context, Duration, Effect, Layer, Metric, Option, Queue, Ref, Schedule } from "effect"
import { conditionHolds, defaultAlertSettings, finishedCounts, metricValue, rulesOf } from "./AlertRules.js"
import type { AlertRule, AlertSettings } from "./AlertRules.js"
import { sampleServer } from "./ServerSample.js"
import type { ServerSample } from "./ServerSample.js"
import { WeftMetrics } from "./WeftMetrics.js"

export class AlertsConfig extends Context.Tag("weft/AlertsConfig")<AlertsConfig, AlertSettings>() {
  static layer = (settings: AlertSettings = defaultAlertSettings): Layer.Layer<AlertsConfig> => Layer.succeed(AlertsConfig, settings)
}

/** Where one rule stands; `Firing` remembers when it was last notified, for the repeat interval. */
export type RuleState =
  | { readonly _tag: "Inactive" }
  | { readonly _tag: "Pending"; readonly since: number }
  | { readonly _tag: "Firing"; readonly since: number; readonly firedAt: number; readonly notifiedAt: number }

/** One notification: a rule changed state, or is still firing after the repeat interval (`repeat`). */
export interface AlertNotification {
  readonly alert: string
  readonly status: "pending" | "firing" | "resolved"
  readonly repeat: boolean
  readonly severity: AlertRule["severity"]
  readonly summary: string
  readonly metric: AlertRule["metric"]
  readonly op: AlertRule["op"]
  readonly threshold: number
  readonly forMs: number
  readonly value: number
  readonly startsAt: string
  readonly endsAt: string | null
}

/** An alert as `GET /admin/alerts` lists it. */
export interface AlertView {
  readonly alert: string
  readonly status: "pending" | "firing" | "resolved"
  readonly severity: AlertRule["severity"]
  readonly summary: string
  readonly value: number
  readonly startsAt: string
  readonly firedAt: string | null
  readonly endsAt: string | null
}

const iso = (at: number) => new Date(at).toISOString()

const summaryOf = (rule: AlertRule) => rule.summary ?? `${rule.metric} ${rule.op} ${rule.threshold}`

/**
 * One evaluation of one rule: its next state and what to notify. Pending alerts fire once the condition has held for
 * `for`; a firing one is notified again only after `repeatMs`; it resolves as soon as the condition stops holding.
 */
export const stepRule = (
  rule: AlertRule,
  state: RuleState,
  holds: boolean,
  now: number,
  repeatMs: number
): { readonly next: RuleState; readonly notify: Omit<AlertNotification, "value" | "alert" | "severity" | "summary" | "metric" | "op" | "threshold" | "forMs"> | undefined } => {
  const fire = (since: number, repeat: boolean) => ({
    next: { _tag: "Firing", since, firedAt: repeat && state._tag === "Firing" ? state.firedAt : now, notifiedAt: now } as const,
    notify: { status: "firing", repeat, startsAt: iso(since), endsAt: null } as const
  })
  switch (state._tag) {
    case "Inactive":
      if (!holds) return { next: state, notify: undefined }
      return rule.for === 0 ? fire(now, false) : { next: { _tag: "Pending", since: now }, notify: { status: "pending", repeat: false, startsAt: iso(now), endsAt: null } }
    case "Pending":
      if (!holds) return { next: { _tag: "Inactive" }, notify: undefined }
      return now - state.since >= rule.for ? fire(state.since, false) : { next: state, notify: undefined }
    case "Firing":
      if (!holds) return { next: { _tag: "Inactive" }, notify: { status: "resolved", repeat: false, startsAt: iso(state.since), endsAt: iso(now) } }
      return now - state.notifiedAt >= repeatMs ? fire(state.since, true) : { next: state, notify: undefined }
  }
}

/** How many resolved alerts `GET /admin/alerts` keeps. */
const recentCapacity = 50

/** Each webhook's pending notifications; beyond this the oldest are dropped rather than slow anything. */
const webhookBacklog = 256

/** Retries of one webhook delivery: exponential from 250 ms, jittered, five more tries. */
const webhookRetry = Schedule.exponential(Duration.millis(250)).pipe(Schedule.jittered, Schedule.intersect(Schedule.recurs(5)))

/**
 * Evaluates the alert rules on Weft's own numbers every `evaluationInterval`: each transition (pending, firing,
 * resolved) is logged and firing/resolved are POSTed to every webhook, once; `weft_alerts_firing{alert}` follows the
 * firing ones. Webhooks are delivered by a fiber each, in order, with retries, so a failing one never blocks serving.
 */
export class Alerts extends Effect.Service<Alerts>()("weft/Alerts", {
  scoped: Effect.gen(function*() {
    const settings = Option.getOrElse(yield* Effect.serviceOption(AlertsConfig), () => defaultAlertSettings)
    const rules = rulesOf(settings)
    const client = (yield* HttpClient.HttpClient).pipe(HttpClient.filterStatusOk)
    /** Rule states by name, and resolved alerts newest first; only `evaluate` writes them. */
    const states = yield* Ref.make<ReadonlyMap<string, { readonly state: RuleState; readonly value: number }>>(
      new Map(rules.map((rule) => [rule.name, { state: { _tag: "Inactive" }, value: 0 }]))
    )
    const resolved = yield* Ref.make<ReadonlyArray<AlertView>>([])
    /** Finished-request counts of recent samples, oldest first, for `error_rate`. */
    const finishedHistory = yield* Ref.make<ReadonlyArray<{ readonly at: number; readonly total: number; readonly errors: number }>>([])

    const deliver = (url: string, notification: AlertNotification) =>
      HttpClientRequest.post(url).pipe(
        HttpClientRequest.bodyUnsafeJson(notification),
        client.execute,
        Effect.scoped,
        Effect.timeout(Duration.seconds(5)),
        Effect.retry(webhookRetry),
        Effect.catchAll((error) => Effect.logWarning("alert webhook failed", error).pipe(Effect.annotateLogs({ alert: notification.alert, status: notification.status }))),
        Effect.asVoid
      )
    const webhooks = yield* Effect.forEach(settings.webhooks, (url) =>
      Effect.gen(function*() {
        const queue = yield* Queue.sliding<AlertNotification>(webhookBacklog)
        yield* Queue.take(queue).pipe(Effect.flatMap((notification) => deliver(url, notification)), Effect.forever, Effect.forkScoped)
        return queue
      }))

    const notify = (notification: AlertNotification) =>
      Effect.gen(function*() {
        const log = notification.status === "firing" ? Effect.logWarning("alert firing") : Effect.logInfo(`alert ${notification.status}`)
        yield* Effect.annotateLogs(log, { ...notification })
        if (notification.status === "pending") return
        yield* Effect.forEach(webhooks, (queue) => Queue.offer(queue, notification), { discard: true })
      })

    const errorRate = (sample: ServerSample) =>
      Ref.modify(finishedHistory, (history) => {
        const counts = { at: sample.at, ...finishedCounts(sample) }
        const kept = [...history.filter((one) => one.at >= sample.at - settings.errorRateWindow), counts]
        const oldest = kept[0]!
        const total = counts.total - oldest.total
        return [total === 0 ? 0 : (counts.errors - oldest.errors) / total, kept] as const
      })

    /** Evaluates every rule on `sample`. */
    const evaluate = Effect.fn("Alerts.evaluate")(function*(sample: ServerSample) {
      const rate = yield* errorRate(sample)
      const now = sample.at
      for (const rule of rules) {
        const value = metricValue(rule.metric, sample, rate)
        const current = (yield* Ref.get(states)).get(rule.name)!
        const { next, notify: change } = stepRule(rule, current.state, conditionHolds(rule, value), now, settings.repeatInterval)
        yield* Ref.update(states, (all) => new Map(all).set(rule.name, { state: next, value }))
        yield* Metric.set(Metric.tagged(WeftMetrics.alertsFiring, "alert", rule.name), next._tag === "Firing" ? 1 : 0)
        if (change === undefined) continue
        const notification: AlertNotification = {
          alert: rule.name,
          severity: rule.severity,
          summary: summaryOf(rule),
          metric: rule.metric,
          op: rule.op,
          threshold: rule.threshold,
          forMs: rule.for,
          value,
          ...change
        }
        if (change.status === "resolved" && current.state._tag === "Firing") {
          const view: AlertView = {
            alert: rule.name,
            status: "resolved",
            severity: rule.severity,
            summary: notification.summary,
            value,
            startsAt: change.startsAt,
            firedAt: iso(current.state.firedAt),
            endsAt: change.endsAt
          }
          yield* Ref.update(resolved, (list) => [view, ...list].slice(0, recentCapacity))
        }
        yield* notify(notification)
      }
    })

    /** Pending and firing alerts, then recently resolved ones, newest first. */
    const list = Effect.gen(function*() {
      const all = yield* Ref.get(states)
      const active = rules.flatMap((rule): Array<AlertView> => {
        const entry = all.get(rule.name)!
        if (entry.state._tag === "Inactive") return []
        return [{
          alert: rule.name,
          status: entry.state._tag === "Firing" ? "firing" : "pending",
          severity: rule.severity,
          summary: summaryOf(rule),
          value: entry.value,
          startsAt: iso(entry.state.since),
          firedAt: entry.state._tag === "Firing" ? iso(entry.state.firedAt) : null,
          endsAt: null
        }]
      })
      return [...active, ...(yield* Ref.get(resolved))]
    })

    yield* Effect.forEach(rules, (rule) => Metric.set(Metric.tagged(WeftMetrics.alertsFiring, "alert", rule.name), 0), { discard: true })
    yield* sampleServer.pipe(
      Effect.flatMap(evaluate),
      Effect.catchAllDefect((defect) => Effect.logError("alert evaluation failed", defect)),
      Effect.repeat(Schedule.spaced(Duration.millis(settings.evaluationInterval))),
      Effect.forkScoped
    )

    return { rules, list, evaluate } as const
  }),
  dependencies: [NodeHttpClient.layerUndici]
}) {}
