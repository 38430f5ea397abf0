import { quantilesOfSorted } from "./Percentiles.js"

/** Percentiles of a sample window, `null` when it holds no sample. */
export interface Percentiles {
  readonly count: number
  readonly p50: number | null
  readonly p95: number | null
  readonly p99: number | null
  readonly max: number | null
}

/**
 * The samples of the last `maxAgeMs`, at most `capacity` of them (the oldest go first), for percentiles a dashboard
 * shows; timestamps are `Clock` milliseconds, so `TestClock` drives it.
 */
export class SlidingWindow {
  private readonly times: Float64Array
  private readonly values: Float64Array
  private start = 0
  private size = 0

  constructor(private readonly maxAgeMs: number, private readonly capacity: number = 8192) {
    this.times = new Float64Array(capacity)
    this.values = new Float64Array(capacity)
  }

  add(at: number, value: number): void {
    const index = (this.start + this.size) % this.capacity
    this.times[index] = at
    this.values[index] = value
    if (this.size < this.capacity) this.size++
    else this.start = (this.start + 1) % this.capacity
  }

  private evict(now: number): void {
    while (this.size > 0 && this.times[this.start]! < now - this.maxAgeMs) {
      this.start = (this.start + 1) % this.capacity
      this.size--
    }
  }

  /** Nearest-rank percentiles of the samples still in the window at `now`. */
  percentiles(now: number): Percentiles {
    this.evict(now)
    const sorted = new Float64Array(this.size)
    for (let i = 0; i < this.size; i++) sorted[i] = this.values[(this.start + i) % this.capacity]!
    sorted.sort()
    return { count: sorted.length, ...(quantilesOfSorted(sorted) ?? { p50: null, p95: null, p99: null, max: null }) }
  }
}

/** Counts per second over the last `seconds` seconds, for rates "now". */
export class RateWindow {
  private readonly counts: Float64Array
  private readonly seconds: Float64Array

  constructor(private readonly windowSeconds: number) {
    // One more second than the window, for the current second that is still filling.
    this.counts = new Float64Array(windowSeconds + 1)
    this.seconds = new Float64Array(windowSeconds + 1).fill(-1)
  }

  add(at: number, amount: number): void {
    const second = Math.floor(at / 1000)
    const index = second % this.counts.length
    if (this.seconds[index] !== second) {
      this.seconds[index] = second
      this.counts[index] = 0
    }
    this.counts[index]! += amount
  }

  /** The mean per second over the window's whole seconds before `now`'s (the current second is still filling). */
  perSecond(now: number): number {
    const current = Math.floor(now / 1000)
    let total = 0
    for (let i = 0; i < this.counts.length; i++) {
      const second = this.seconds[i]!
      if (second < current && second >= current - this.windowSeconds) total += this.counts[i]!
    }
    return total / this.windowSeconds
  }
}
