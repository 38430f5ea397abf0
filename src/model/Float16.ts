const float32Scratch = new Float32Array(1)
const float32ScratchBits = new Uint32Array(float32Scratch.buffer)

/** IEEE 754 binary16 bits of `value`, rounded to nearest even (overflow gives ±Infinity, NaN stays NaN). */
export const float32ToFloat16Bits = (value: number): number => {
  float32Scratch[0] = value
  const bits = float32ScratchBits[0]!
  const sign = (bits >>> 16) & 0x8000
  const exponent = (bits >>> 23) & 0xff
  const mantissa = bits & 0x7fffff

  if (exponent === 0xff) return sign | 0x7c00 | (mantissa === 0 ? 0 : 0x200)

  const halfExponent = exponent - 127 + 15
  if (halfExponent >= 0x1f) return sign | 0x7c00

  if (halfExponent <= 0) {
    if (halfExponent < -10) return sign
    // Subnormal half: shift the mantissa (with its implicit leading 1) down to units of 2^-24.
    const fullMantissa = mantissa | 0x800000
    const shift = 14 - halfExponent
    const truncated = fullMantissa >>> shift
    const remainder = fullMantissa & ((1 << shift) - 1)
    const halfway = 1 << (shift - 1)
    const roundUp = remainder > halfway || (remainder === halfway && (truncated & 1) === 1)
    return sign | (truncated + (roundUp ? 1 : 0))
  }

  const truncated = (halfExponent << 10) | (mantissa >>> 13)
  const remainder = mantissa & 0x1fff
  const roundUp = remainder > 0x1000 || (remainder === 0x1000 && (truncated & 1) === 1)
  // A carry out of the mantissa correctly bumps the exponent (up to Infinity).
  return sign | (truncated + (roundUp ? 1 : 0))
}

/** binary16 bits of every value, in the platform's byte order. */
export const encodeFloat16 = (values: ArrayLike<number>): Uint16Array => {
  const halves = new Uint16Array(values.length)
  for (let i = 0; i < values.length; i++) halves[i] = float32ToFloat16Bits(values[i]!)
  return halves
}

/** The number that binary16 `bits` encode. */
export const float16BitsToNumber = (bits: number): number => {
  const sign = bits & 0x8000 ? -1 : 1
  const exponent = (bits >>> 10) & 0x1f
  const mantissa = bits & 0x3ff
  if (exponent === 0) return sign * mantissa * 2 ** -24
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15)
}
