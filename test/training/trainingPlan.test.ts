import { FastCheck as fc } from "effect"
import { describe, expect, it } from "vitest"
import { learningRateAt, packWindows, splitValidation } from "../../src/training/Trainer.js"

describe("splitValidation", () => {
  it("holds out the asked fraction (at least one, never all), spread evenly, and keeps every example exactly once in order", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 300 }), fc.double({ min: 0, max: 0.5, noNaN: true }), (count, fraction) => {
      const examples = Array.from({ length: count }, (_, at) => at)
      const { train, validation } = splitValidation(examples, fraction)
      expect([...train, ...validation].sort((a, b) => a - b)).toEqual(examples)
      expect(train).toEqual([...train].sort((a, b) => a - b))
      const expected = fraction <= 0 || count < 2 ? 0 : Math.min(count - 1, Math.max(1, Math.round(count * fraction)))
      expect(validation.length).toBe(expected)
      // Evenly: consecutive held-out examples are never much closer or further apart than count / held.
      for (let at = 1; at < validation.length; at++) {
        expect(Math.abs(validation[at]! - validation[at - 1]! - count / validation.length)).toBeLessThanOrEqual(1)
      }
    }))
  })
})

describe("learningRateAt", () => {
  it("constant stays; linear and cosine go from the base to a tenth of it, never rising", () => {
    expect(learningRateAt("constant", 0.01, 7, 10)).toBe(0.01)
    for (const schedule of ["linear", "cosine"] as const) {
      const rates = Array.from({ length: 10 }, (_, step) => learningRateAt(schedule, 0.01, step, 10))
      expect(rates[0]).toBeCloseTo(0.01, 12)
      expect(rates[9]).toBeCloseTo(0.001, 12)
      for (let step = 1; step < rates.length; step++) expect(rates[step]!).toBeLessThanOrEqual(rates[step - 1]!)
    }
  })
})

describe("packWindows", () => {
  it("a stream shorter than a window fills one, repeating; labels count where their token is a target", () => {
    const windows = packWindows([{ tokens: [1, 5, 6], targets: [false, false, true] }], 4)
    expect(windows.map((window) => [...window.tokens])).toEqual([[1, 5, 6, 1, 5]])
    // Labels are tokens 1 … 4 of the window: 5 (no), 6 (yes), 1 (no), 5 (no).
    expect(windows.map((window) => [...window.targets])).toEqual([[0, 1, 0, 0]])
    expect(packWindows([{ tokens: [1, 5, 6], targets: [false, false, false] }], 4)).toEqual([])
  })
})
