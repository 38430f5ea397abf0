import { describe, expect, it } from "@effect/vitest"
import { ceilingTable } from "../../src/bench/BenchReport.js"
import type { LevelSummary } from "../../src/bench/BenchReport.js"

const percentiles = { p50: 1, p95: 1, p99: 1, max: 1 }
const summary = (mode: string, concurrency: number, tokensPerSecond: number): LevelSummary => ({
  mode,
  concurrency,
  rounds: 1,
  tokensPerSecond,
  vsNaive: undefined,
  ttftMs: percentiles,
  itlMs: percentiles,
  e2eMs: percentiles,
  errors: 0,
  backgroundLoad: undefined
})

describe("ceilingTable", () => {
  it("reports the median ceiling per level and each mode's share of it", () => {
    const table = ceilingTable(
      [
        { concurrency: 16, round: 0, tokensPerSecond: 250, msPerStep: 64 },
        { concurrency: 1, round: 0, tokensPerSecond: 70, msPerStep: 14.3 },
        { concurrency: 16, round: 1, tokensPerSecond: 270, msPerStep: 59 },
        { concurrency: 16, round: 2, tokensPerSecond: 300, msPerStep: 53 }
      ],
      [summary("naive", 16, 108), summary("weft-http", 1, 63), summary("weft-http", 16, 216)]
    )
    expect(table?.split("\n")).toEqual([
      "| streams | llama_decode alone tok/s | ms per step | naive % of it | weft-http % of it |",
      "|---:|---:|---:|---:|---:|",
      "| 1 | 70.0 | 14.3 | – | 90% |",
      "| 16 | 270.0 | 59.0 | 40% | 80% |"
    ])
  })

  it("is left out when the ceiling was not measured", () => {
    expect(ceilingTable([], [summary("naive", 1, 60)])).toBeUndefined()
  })
})
