import { describe, expect, it } from "vitest"
import { benchCompletionTokens } from "../../src/bench/BenchPrompt.js"

describe("benchCompletionTokens", () => {
  it("is the mean without a spread", () => {
    expect(Array.from({ length: 50 }, (_, index) => benchCompletionTokens(index, 64, 0))).toEqual(Array(50).fill(64))
  })

  it("spreads lengths over mean ± spread, the same for each index every time", () => {
    const lengths = Array.from({ length: 2000 }, (_, index) => benchCompletionTokens(index, 64, 48))
    expect(Math.min(...lengths)).toBe(16)
    expect(Math.max(...lengths)).toBe(112)
    expect(new Set(lengths).size).toBe(97)
    const mean = lengths.reduce((sum, length) => sum + length, 0) / lengths.length
    expect(Math.abs(mean - 64)).toBeLessThan(2)
    expect(Array.from({ length: 2000 }, (_, index) => benchCompletionTokens(index, 64, 48))).toEqual(lengths)
  })
})
