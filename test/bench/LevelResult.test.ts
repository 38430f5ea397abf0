import { describe, expect, it } from "@effect/vitest"
import { summarize } from "../../src/bench/LevelResult.js"
import type { RequestSample } from "../../src/bench/LevelResult.js"
import { summarizeRun, targetTable } from "../../src/bench/BenchReport.js"

const sample = (startedAt: number, chunkTimes: ReadonlyArray<number>, completionTokens = chunkTimes.length): RequestSample => ({
  ok: true,
  startedAt,
  endedAt: chunkTimes[chunkTimes.length - 1] ?? startedAt,
  chunkTimes,
  completionTokens
})

describe("bench statistics", () => {
  it("counts only tokens inside the window and latencies of requests started inside it", () => {
    const samples = [
      sample(0, [100, 200, 300]), // started before the window: its tokens inside count, its latency does not
      sample(1000, [1100, 1110, 1130]),
      sample(1500, [1600, 1700], 4), // two chunks carrying four tokens
      { ...sample(1200, []), ok: false, error: "HTTP 500" }
    ]
    const result = summarize("m", 2, samples, { start: 250, end: 2250 })
    expect(result.completionTokens).toBe(1 + 3 + 4)
    expect(result.tokensPerSecond).toBe(4)
    expect(result.requests).toBe(3)
    expect(result.errors).toBe(1)
    expect(result.firstError).toBe("HTTP 500")
    expect(result.ttftMs.p50).toBe(100)
    expect(result.itlMs.max).toBe(100)
    expect(result.itlMs.p50).toBe(20)
  })

  it("ratios to naive are taken round by round, and the targets are checked on them", () => {
    const level = (mode: string, concurrency: number, round: number, tokensPerSecond: number, ttftP50 = 50, ttftP99 = 60) => ({
      ...summarize(mode, concurrency, [], { start: 0, end: 1 }),
      tokensPerSecond,
      round,
      ttftMs: { p50: ttftP50, p95: ttftP99, p99: ttftP99, max: ttftP99 },
      // Given as figures only, so the summary takes the median of the rounds'.
      latencySamples: undefined
    })
    const results = [
      level("naive", 1, 0, 50), level("weft-http", 1, 0, 75), level("in-process", 1, 0, 76),
      level("naive", 1, 1, 40), level("weft-http", 1, 1, 64), level("in-process", 1, 1, 66),
      level("naive", 16, 0, 100), level("weft-http", 16, 0, 400, 80, 90), level("in-process", 16, 0, 410)
    ]
    const summaries = summarizeRun(results)
    const weft1 = summaries.find((summary) => summary.mode === "weft-http" && summary.concurrency === 1)!
    expect(weft1.vsNaive).toBeCloseTo((1.5 + 1.6) / 2)
    expect(weft1.tokensPerSecond).toBe((75 + 64) / 2)
    const table = targetTable(summaries)!
    expect(table).toMatch(/1 stream: ≥ 1.4× naive \| 1.55× .* \| yes/)
    expect(table).toMatch(/16 streams: ≥ 3.5× naive \| 4.00× .* \| yes/)
    expect(table).toMatch(/TTFT p99 at 16 streams .* \| 1.80× .* \| yes/)
    expect(table).toMatch(/HTTP overhead at 1 stream .* \| 2.1% .* \| yes/)
  })

  it("takes TTFT and E2E percentiles over all rounds' requests, not the median of each round's", () => {
    // Three rounds of 20 requests: one slow request in each round, 500 ms in the last.
    const round = (index: number, slow: number) => ({
      ...summarize("weft-http", 16, Array.from({ length: 20 }, (_, at) => sample(at * 10, [at * 10 + (at === 0 ? slow : 50)])), { start: 0, end: 1000 }),
      round: index
    })
    const rounds = [round(0, 100), round(1, 100), round(2, 500)]
    expect(rounds.map((result) => result.ttftMs.max)).toEqual([100, 100, 500])
    const [summary] = summarizeRun(rounds)
    // 60 requests together: the median is one of the 50 ms ones, the slowest is the last round's 500 ms.
    expect(summary!.ttftMs.p50).toBe(50)
    expect(summary!.ttftMs.max).toBe(500)
    expect(summary!.e2eMs.max).toBe(500)
    // Without samples (results from before), the median of the rounds' own figures.
    const [old] = summarizeRun(rounds.map(({ latencySamples: _, ...result }) => result))
    expect(old!.ttftMs.max).toBe(100)
  })
})
