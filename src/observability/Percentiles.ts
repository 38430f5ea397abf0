/** p50, p95, p99 and max of a distribution. */
export interface Quantiles {
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
}

/** Nearest-rank percentile `p` (0–100) of an ascending array; NaN when empty. */
export const percentile = (sorted: ArrayLike<number>, p: number): number => {
  if (sorted.length === 0) return Number.NaN
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!
}

/** Nearest-rank p50, p95, p99 and max of an ascending array; `undefined` when empty. */
export const quantilesOfSorted = (sorted: ArrayLike<number>): Quantiles | undefined =>
  sorted.length === 0 ? undefined : {
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    max: sorted[sorted.length - 1]!
  }
