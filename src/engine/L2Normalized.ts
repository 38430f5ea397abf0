/**
 * `vector` scaled to unit length, as float32 (OpenAI's embeddings are unit vectors, so a dot product is their cosine
 * similarity). A zero vector stays zero.
 */
export const l2Normalized = (vector: ArrayLike<number>): Float32Array => {
  let sumOfSquares = 0
  for (let index = 0; index < vector.length; index++) sumOfSquares += vector[index]! * vector[index]!
  const norm = Math.sqrt(sumOfSquares)
  const normalized = new Float32Array(vector.length)
  if (norm === 0 || !Number.isFinite(norm)) return normalized
  for (let index = 0; index < vector.length; index++) normalized[index] = vector[index]! / norm
  return normalized
}
