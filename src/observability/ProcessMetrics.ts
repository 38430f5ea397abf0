import { Effect, Metric } from "effect"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { WeftMetrics } from "./WeftMetrics.js"

/** What `/admin/stats` shows of the process. */
export interface ProcessStats {
  readonly residentMemoryBytes: number
  readonly heapUsedBytes: number
  readonly heapTotalBytes: number
  readonly eventLoopLagMs: number
  readonly eventLoopLagP99Ms: number
  readonly uptimeSeconds: number
}

const nanosPerSecond = 1e9
const resolutionMs = 10

/** CPU microseconds already counted: the counter is process-wide, however many services sample it. */
let cpuMicrosCounted = 0

/** Samples memory, CPU time and event-loop delay of this process into Weft's process metrics when scraped. */
export class ProcessMetrics extends Effect.Service<ProcessMetrics>()("weft/ProcessMetrics", {
  scoped: Effect.gen(function*() {
    const delay = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const histogram = monitorEventLoopDelay({ resolution: resolutionMs })
        histogram.enable()
        return histogram
      }),
      (histogram) => Effect.sync(() => histogram.disable())
    )
    yield* Metric.set(WeftMetrics.startTime, Math.floor(Date.now() / 1000 - process.uptime()))

    /** Updates the process metrics; event-loop delay is measured since the previous sample. */
    const sample = Effect.fn("ProcessMetrics.sample")(function*() {
      const memory = process.memoryUsage()
      const cpu = process.cpuUsage()
      const cpuNow = cpu.user + cpu.system
      const cpuDelta = Math.max(0, cpuNow - cpuMicrosCounted)
      cpuMicrosCounted = Math.max(cpuMicrosCounted, cpuNow)
      // The histogram records whole sampling intervals, the timer's resolution included: lag is what exceeds it.
      // With no interval measured yet it reports sentinels, so that reads as no lag.
      const lagOf = (nanos: number) => (delay.count > 0 ? Math.max(0, nanos / nanosPerSecond - resolutionMs / 1000) : 0)
      const lagSeconds = lagOf(delay.mean)
      const lagP99Seconds = lagOf(delay.percentile(99))
      delay.reset()
      yield* Effect.all(
        [
          Metric.set(WeftMetrics.residentMemory, memory.rss),
          Metric.set(WeftMetrics.heapUsed, memory.heapUsed),
          Metric.set(WeftMetrics.heapTotal, memory.heapTotal),
          Metric.set(WeftMetrics.externalMemory, memory.external),
          Metric.set(WeftMetrics.eventLoopLag, lagSeconds),
          Metric.set(WeftMetrics.eventLoopLagP99, lagP99Seconds),
          Metric.incrementBy(WeftMetrics.cpuSeconds, cpuDelta / 1e6)
        ],
        { discard: true }
      )
      return {
        residentMemoryBytes: memory.rss,
        heapUsedBytes: memory.heapUsed,
        heapTotalBytes: memory.heapTotal,
        eventLoopLagMs: lagSeconds * 1000,
        eventLoopLagP99Ms: lagP99Seconds * 1000,
        uptimeSeconds: process.uptime()
      } satisfies ProcessStats
    })

    return { sample } as const
  })
}) {}
