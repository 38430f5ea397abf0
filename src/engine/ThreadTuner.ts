/** How the tuner explores. */
export interface ThreadTunerOptions {
  /** The configured thread count: the most any step uses. */
  readonly maxThreads: number
  /** Steps measured with each candidate before the tuner starts choosing (per batch-size class). */
  readonly warmupSamples: number
  /** Weight of the newest measurement in the running average of the candidate in use. */
  readonly smoothing: number
  /**
   * Weight of a probe's measurement in the running average of the candidate not in use. Its estimate is as old as its
   * last probe, so a probe counts for more than a step of the one in use: otherwise an estimate taken while another
   * process held the cores (say during warm-up) outlives that load by thousands of steps.
   */
  readonly probeSmoothing: number
  /**
   * A measurement counts for at most this multiple of its candidate's estimate. A decode that a stall of the machine
   * (a vCPU descheduled, page faults) held up for 80 ms is not what that thread count costs.
   */
  readonly outlierCap: number
  /** One step in this many re-measures the candidate not chosen, when it was close (within 1.5×). */
  readonly probeEvery: number
  /** The same for a candidate that was far behind. */
  readonly probeRarelyEvery: number
}

export const defaultThreadTunerOptions = (maxThreads: number): ThreadTunerOptions => ({
  maxThreads,
  warmupSamples: 6,
  smoothing: 0.1,
  probeSmoothing: 0.5,
  outlierCap: 1.5,
  probeEvery: 32,
  probeRarelyEvery: 256
})

interface Estimate {
  samples: number
  /** Running average of milliseconds per evaluated token. */
  msPerToken: number
}

/** A candidate and its estimate. */
interface Ranked {
  readonly threads: number
  readonly msPerToken: number
}

interface SizeClass {
  readonly estimates: Map<number, Estimate>
  choices: number
  /** The candidate steps use, chosen again after each probe; unset until every candidate is warmed up. */
  inUse: number | undefined
}

/** Batch-size classes: steps of similar width share what was learnt (1, 2–3, 4–7, 8–15, …). */
const classOf = (tokens: number): number => Math.floor(Math.log2(Math.max(1, tokens)))

/**
 * Picks the thread count of each decode step from measurements, per batch-size class, between the configured
 * count and half of it (at least 1).
 *
 * llama.cpp's CPU threads meet at a spinning barrier after every operation of the graph: if one of them loses its
 * core for a moment (another process, a VM's vCPU stall, our own JS thread), all of them wait. A one-token step is
 * memory-bound and gains little from a second thread, but pays every such stall; on a 2-core machine one thread
 * decodes a single stream faster on average than two (llama.cpp itself has a separate `n_threads` for one-token
 * steps). Wide batches are compute-bound and want every core. Which one wins depends on the machine and on its load,
 * so it is measured, not assumed: each class keeps a running average per candidate, and the candidate not in use is
 * re-measured now and then, often when it was close, rarely when it was far behind. The choice changes only after such
 * a probe, and a measurement counts for at most 1.5× its candidate's estimate: two threads on 2 cores are faster on
 * average, yet one of their steps in ten is slow, and switching on each of those cost more than the probes.
 */
export class ThreadTuner {
  private readonly classes = new Map<number, SizeClass>()
  private readonly candidates: ReadonlyArray<number>

  constructor(private readonly options: ThreadTunerOptions) {
    const max = Math.max(1, Math.floor(options.maxThreads))
    this.candidates = [...new Set([max, Math.max(1, Math.floor(max / 2))])]
  }

  /** Threads for a step that evaluates `tokens` tokens. */
  choose(tokens: number): number {
    if (this.candidates.length === 1) return this.candidates[0]!
    const sizeClass = this.classFor(tokens)
    sizeClass.choices += 1
    const measured = this.candidates.map((threads) => ({ threads, estimate: sizeClass.estimates.get(threads) }))
    const unsure = measured
      .filter(({ estimate }) => (estimate?.samples ?? 0) < this.options.warmupSamples)
      .sort((a, b) => (a.estimate?.samples ?? 0) - (b.estimate?.samples ?? 0))
    if (unsure.length > 0) return unsure[0]!.threads
    // Every candidate has its warm-up samples, so each has an estimate.
    const ranked = this.ranked(sizeClass)!
    const inUse = sizeClass.inUse ??= ranked[0]!.threads
    const current = ranked.find((candidate) => candidate.threads === inUse)!
    const other = ranked.find((candidate) => candidate.threads !== inUse)!
    const close = other.msPerToken <= 1.5 * current.msPerToken
    const interval = close ? this.options.probeEvery : this.options.probeRarelyEvery
    return sizeClass.choices % interval === 0 ? other.threads : inUse
  }

  /** Records how long a step of `tokens` tokens took with `threads` threads. */
  record(tokens: number, threads: number, milliseconds: number): void {
    if (!(milliseconds >= 0) || tokens <= 0) return
    const sizeClass = this.classFor(tokens)
    const perToken = milliseconds / tokens
    const estimate = sizeClass.estimates.get(threads)
    if (estimate === undefined) {
      sizeClass.estimates.set(threads, { samples: 1, msPerToken: perToken })
      return
    }
    estimate.samples += 1
    // A plain mean while warming up, then a running average that follows the machine's load.
    if (estimate.samples <= this.options.warmupSamples) {
      estimate.msPerToken += (perToken - estimate.msPerToken) / estimate.samples
      return
    }
    const measured = Math.min(perToken, this.options.outlierCap * estimate.msPerToken)
    if (threads === sizeClass.inUse) {
      estimate.msPerToken += this.options.smoothing * (measured - estimate.msPerToken)
      return
    }
    estimate.msPerToken += this.options.probeSmoothing * (measured - estimate.msPerToken)
    // The choice is made again after a probe only: between probes one slow step of the candidate in use, measured
    // at every step, would otherwise switch away from it on noise.
    sizeClass.inUse = this.ranked(sizeClass)?.[0]?.threads
  }

  /** What was learnt, per batch-size class (for diagnostics and tests). */
  snapshot(): ReadonlyArray<{ readonly minTokens: number; readonly threads: number; readonly msPerToken: number; readonly samples: number }> {
    return [...this.classes.entries()].sort((a, b) => a[0] - b[0]).flatMap(([sizeClass, { estimates }]) =>
      [...estimates.entries()].map(([threads, estimate]) => ({
        minTokens: 2 ** sizeClass,
        threads,
        msPerToken: estimate.msPerToken,
        samples: estimate.samples
      }))
    )
  }

  /**
   * The candidates by estimate, fastest first (in candidate order where equal), once every one has an estimate: after
   * a probe the first becomes the one in use.
   */
  private ranked(sizeClass: SizeClass): ReadonlyArray<Ranked> | undefined {
    const ranked: Array<Ranked> = []
    for (const threads of this.candidates) {
      const estimate = sizeClass.estimates.get(threads)
      if (estimate === undefined) return undefined
      ranked.push({ threads, msPerToken: estimate.msPerToken })
    }
    return ranked.sort((a, b) => a.msPerToken - b.msPerToken)
  }

  private classFor(tokens: number): SizeClass {
    const key = classOf(tokens)
    let sizeClass = this.classes.get(key)
    if (sizeClass === undefined) {
      sizeClass = { estimates: new Map(), choices: 0, inUse: undefined }
      this.classes.set(key, sizeClass)
    }
    return sizeClass
  }
}
