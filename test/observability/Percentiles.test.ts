import { describe, expect, it } from "@effect/vitest"
import { percentile, quantilesOfSorted } from "../../src/observability/Percentiles.js"
import { SlidingWindow } from "../../src/observability/SlidingWindow.js"

describe("Percentiles", () => {
  it("nearest-rank percentiles", () => {
    const values = Array.from({ length: 100 }, (_, index) => index + 1)
    expect(percentile(values, 50)).toBe(50)
    expect(percentile(values, 99)).toBe(99)
    expect(percentile([7], 99)).toBe(7)
    expect(percentile([], 50)).toBeNaN()
    expect(quantilesOfSorted([])).toBeUndefined()
    expect(quantilesOfSorted(Float64Array.from([1, 2, 3, 4]))).toEqual({ p50: 2, p95: 4, p99: 4, max: 4 })
  })

  it("the sliding window reports the same nearest ranks, over its last maxAge only", () => {
    const window = new SlidingWindow(1000)
    for (let index = 1; index <= 100; index++) window.add(index, 101 - index)
    expect(window.percentiles(100)).toEqual({ count: 100, p50: 50, p95: 95, p99: 99, max: 100 })
    expect(window.percentiles(1090)).toEqual({ count: 11, p50: 6, p95: 11, p99: 11, max: 11 })
    expect(window.percentiles(5000)).toEqual({ count: 0, p50: null, p95: null, p99: null, max: null })
  })
})
