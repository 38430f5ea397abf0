import { Context, Layer } from "effect"
import type { StageTimeouts } from "./GenerationRequest.js"

/** Admission, timeouts and shutdown settings of the scheduler. */
export interface SchedulerSettings {
  /** Requests that may wait for a slot; one more is rejected with `QueueFull`. */
  readonly maxQueue: number
  readonly timeouts: StageTimeouts
  /** Waiting this long lifts a request by one priority class. */
  readonly agingMs: number
  /** On shutdown, how long in-flight requests may run before they are interrupted. */
  readonly shutdownGraceMs: number
  /** How many finished requests `inspect()` remembers. */
  readonly recentCapacity: number
}

export const defaultSchedulerSettings: SchedulerSettings = {
  maxQueue: 64,
  timeouts: {},
  agingMs: 10_000,
  shutdownGraceMs: 10_000,
  recentCapacity: 100
}

export class SchedulerConfig extends Context.Tag("weft/SchedulerConfig")<SchedulerConfig, SchedulerSettings>() {
  static layer = (settings: Partial<SchedulerSettings> = {}): Layer.Layer<SchedulerConfig> =>
    Layer.succeed(SchedulerConfig, { ...defaultSchedulerSettings, ...settings })
}
