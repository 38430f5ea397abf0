import { Schema } from "effect"

/** Name of a synthetic model size. */
export const ModelPreset = Schema.Literal("tiny", "demo", "bench")
export type ModelPreset = typeof ModelPreset.Type

/** Shape of a llama-architecture model. */
export interface ModelDimensions {
  readonly vocabSize: number
  readonly embeddingLength: number
  readonly blockCount: number
  readonly headCount: number
  readonly headCountKv: number
  readonly feedForwardLength: number
  readonly contextLength: number
  readonly rmsNormEpsilon: number
  readonly ropeFreqBase: number
  /** Leave out `output.weight`: llama.cpp then projects logits with `token_embd` (tied embeddings). */
  readonly tiedOutput?: boolean
}

/** Dimensions of each preset: `tiny` for tests, `demo` for `npm start`, `bench` (~100M parameters, ~200 MB) for benchmarks. */
export const ModelPresets: { readonly [P in ModelPreset]: ModelDimensions } = {
  tiny: {
    vocabSize: 3072,
    embeddingLength: 64,
    blockCount: 2,
    headCount: 4,
    headCountKv: 2,
    feedForwardLength: 128,
    contextLength: 2048,
    rmsNormEpsilon: 1e-5,
    ropeFreqBase: 10000
  },
  demo: {
    vocabSize: 8000,
    embeddingLength: 256,
    blockCount: 4,
    headCount: 8,
    headCountKv: 4,
    feedForwardLength: 512,
    contextLength: 4096,
    rmsNormEpsilon: 1e-5,
    ropeFreqBase: 10000
  },
  bench: {
    vocabSize: 32000,
    embeddingLength: 768,
    blockCount: 12,
    headCount: 12,
    headCountKv: 4,
    feedForwardLength: 2048,
    contextLength: 4096,
    rmsNormEpsilon: 1e-5,
    ropeFreqBase: 10000,
    tiedOutput: true
  }
}

/** Size of one attention head (also the rotary dimension). */
export const headDimension = (dimensions: ModelDimensions): number => dimensions.embeddingLength / dimensions.headCount
