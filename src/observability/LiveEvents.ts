import { Context, Duration, Effect, Layer, Option, PubSub, Ref, Schedule, Stream } from "effect"
import { Alerts } from "./Alerts.js"
import type { AlertView } from "./Alerts.js"
import { sampleServer } from "./ServerSample.js"
import type { ServerSample } from "./ServerSample.js"

/** One point of the dashboard's charts; latencies in milliseconds, `null` while there is no sample. */
export interface ChartPoint {
  readonly at: number
  readonly tokensPerSecond: number
  readonly ttftP50Ms: number | null
  readonly ttftP95Ms: number | null
  readonly interTokenP50Ms: number | null
  readonly interTokenP95Ms: number | null
}

/** What `GET /admin/events` streams: the chart history once, then a snapshot per tick. */
export type LiveEvent =
  | { readonly _tag: "history"; readonly points: ReadonlyArray<ChartPoint> }
  | { readonly _tag: "snapshot"; readonly sample: ServerSample; readonly point: ChartPoint; readonly alerts: ReadonlyArray<AlertView> }

export interface LiveEventsSettings {
  /** How often the server is sampled and a snapshot published. */
  readonly intervalMs: number
  /** How far back the chart history reaches. */
  readonly historyMs: number
}

export class LiveEventsConfig extends Context.Tag("weft/LiveEventsConfig")<LiveEventsConfig, LiveEventsSettings>() {
  static readonly defaults: LiveEventsSettings = { intervalMs: 1000, historyMs: 10 * 60_000 }
  static layer = (settings: Partial<LiveEventsSettings> = {}): Layer.Layer<LiveEventsConfig> =>
    Layer.succeed(LiveEventsConfig, { ...LiveEventsConfig.defaults, ...settings })
}

const largest = (values: ReadonlyArray<number | null>): number | null => {
  const present = values.filter((value): value is number => value !== null)
  return present.length === 0 ? null : Math.max(...present)
}

/** The chart point of a sample: throughput summed over models, the slowest model's latency percentiles. */
export const chartPointOf = (sample: ServerSample): ChartPoint => {
  const stats = sample.models.flatMap((model) => (model.stats === undefined ? [] : [model.stats]))
  return {
    at: sample.at,
    tokensPerSecond: stats.reduce((sum, one) => sum + one.throughput.generationTokensPerSecond, 0),
    ttftP50Ms: largest(stats.map((one) => one.latencyMs.timeToFirstToken.p50)),
    ttftP95Ms: largest(stats.map((one) => one.latencyMs.timeToFirstToken.p95)),
    interTokenP50Ms: largest(stats.map((one) => one.latencyMs.interToken.p50)),
    interTokenP95Ms: largest(stats.map((one) => one.latencyMs.interToken.p95))
  }
}

/**
 * Samples the server on a fixed interval and publishes each snapshot to every `/admin/events` subscriber, keeping
 * the chart points of the last minutes so a dashboard opened later starts with them. The UI never polls internals:
 * it only reads this stream.
 */
export class LiveEvents extends Effect.Service<LiveEvents>()("weft/LiveEvents", {
  scoped: Effect.gen(function*() {
    const settings = Option.getOrElse(yield* Effect.serviceOption(LiveEventsConfig), () => LiveEventsConfig.defaults)
    const alerts = yield* Alerts
    // Sliding: a slow subscriber skips snapshots rather than holding memory; each one is complete on its own.
    const published = yield* PubSub.sliding<LiveEvent>(8)
    /** Chart points, oldest first; only the ticker writes it. */
    const history = yield* Ref.make<ReadonlyArray<ChartPoint>>([])
    const latest = yield* Ref.make<Option.Option<LiveEvent>>(Option.none())

    const tick = Effect.gen(function*() {
      const sample = yield* sampleServer
      const point = chartPointOf(sample)
      yield* Ref.update(history, (points) => [...points.filter((one) => one.at > sample.at - settings.historyMs), point])
      const event: LiveEvent = { _tag: "snapshot", sample, point, alerts: yield* alerts.list }
      yield* Ref.set(latest, Option.some(event))
      yield* PubSub.publish(published, event)
    }).pipe(Effect.withSpan("LiveEvents.tick"))

    yield* tick.pipe(Effect.repeat(Schedule.spaced(Duration.millis(settings.intervalMs))), Effect.forkScoped)

    /** The chart history, the latest snapshot, then every snapshot as it is taken. */
    const subscribe: Stream.Stream<LiveEvent> = Stream.unwrapScoped(
      Effect.gen(function*() {
        const subscription = yield* PubSub.subscribe(published)
        const points = yield* Ref.get(history)
        const last = yield* Ref.get(latest)
        const head: Array<LiveEvent> = [{ _tag: "history", points }, ...Option.toArray(last)]
        return Stream.concat(Stream.fromIterable(head), Stream.fromQueue(subscription))
      })
    )

    return { subscribe, intervalMs: settings.intervalMs } as const
  })
}) {}
