import { describe, expect, it } from "@effect/vitest"
import { FastCheck } from "effect"
import { encodeFloat16, float16BitsToNumber, float32ToFloat16Bits } from "../../src/model/Float16.js"

describe("float32ToFloat16Bits", () => {
  it("encodes exact and special values", () => {
    expect(float32ToFloat16Bits(0)).toBe(0x0000)
    expect(float32ToFloat16Bits(-0)).toBe(0x8000)
    expect(float32ToFloat16Bits(1)).toBe(0x3c00)
    expect(float32ToFloat16Bits(-2)).toBe(0xc000)
    expect(float32ToFloat16Bits(0.1)).toBe(0x2e66)
    expect(float32ToFloat16Bits(65504)).toBe(0x7bff)
    expect(float32ToFloat16Bits(65520)).toBe(0x7c00)
    expect(float32ToFloat16Bits(-Infinity)).toBe(0xfc00)
    expect(float32ToFloat16Bits(NaN) & 0x7e00).toBe(0x7e00)
    expect(float32ToFloat16Bits(2 ** -24)).toBe(0x0001)
    expect(float32ToFloat16Bits(2 ** -14)).toBe(0x0400)
    expect(float32ToFloat16Bits(2 ** -26)).toBe(0x0000)
    // Ties round to even: 1 + 2^-11 is halfway between 1 and the next half.
    expect(float32ToFloat16Bits(1 + 2 ** -11)).toBe(0x3c00)
    expect(float32ToFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02)
    expect(Array.from(encodeFloat16([1, -2]))).toEqual([0x3c00, 0xc000])
  })

  it.prop(
    "rounds to the nearest half within half an ulp",
    [FastCheck.float({ min: -60000, max: 60000, noNaN: true })],
    ([value]) => {
      const decoded = float16BitsToNumber(float32ToFloat16Bits(value))
      const magnitude = Math.max(Math.abs(value), 2 ** -14)
      const halfUlp = 2 ** (Math.floor(Math.log2(magnitude)) - 11)
      expect(Math.abs(decoded - value)).toBeLessThanOrEqual(halfUlp)
    }
  )
})
