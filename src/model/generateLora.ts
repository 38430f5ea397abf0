import * as path from "node:path"
import { Effect } from "effect"
import type { GgufFile, GgufTensor } from "./GgufWriter.js"
import { GgufValue } from "./GgufWriter.js"
import { GGUF_ALIGNMENT, isValidSeed, mixSeed, ModelWriteFailed, normalFloat16Bytes, writeGgufFile } from "./generateModel.js"
import { headDimension, type ModelDimensions, type ModelPreset, ModelPresets } from "./ModelPresets.js"

/** What adapter to generate and where. */
export interface GenerateLoraOptions {
  /** The generated model the adapter is for. */
  readonly base: ModelPreset
  readonly out: string
  /** Rank of each update (columns of `lora_a`); 8 when absent. */
  readonly rank?: number
  /** Seed of the weights; 1 when absent. */
  readonly seed?: number
}

/** Rank used when none is given. */
export const DEFAULT_LORA_RANK = 8

/** Seed used when none is given. */
export const DEFAULT_LORA_SEED = 1

/** Most rank `generateLora` writes: enough for any test, small enough to stay a few MiB on the bench model. */
export const MAX_LORA_RANK = 64

/**
 * Keeps adapter streams apart from the base model's streams of the same seed (the model numbers its tensors from 0).
 */
const loraStreamOffset = 1 << 20

/**
 * The `lora_a`/`lora_b` pair of every matrix the adapter updates, in llama.cpp's layout (llama-adapter.cpp): for a
 * weight of shape `[inner, outer]`, `lora_a` is `[inner, rank]` and `lora_b` is `[rank, outer]`. `lora_a` has fan-in
 * scale and `lora_b` unit-rank scale, so with `alpha = rank` the update `B·A·x` is as large as `W·x` itself: strong
 * enough that the same prompt and seed give other text than the base model.
 */
const loraTensors = (dimensions: ModelDimensions, rank: number, seed: number): Array<GgufTensor> => {
  const embedding = dimensions.embeddingLength
  const kvWidth = dimensions.headCountKv * headDimension(dimensions)
  const tensors: Array<GgufTensor> = []
  const update = (name: string, inner: number, outer: number): void => {
    const pair = [
      { suffix: "lora_a", shape: [inner, rank], deviation: 1 / Math.sqrt(inner) },
      { suffix: "lora_b", shape: [rank, outer], deviation: 1 / Math.sqrt(rank) }
    ] as const
    for (const { deviation, shape, suffix } of pair) {
      const stream = loraStreamOffset + tensors.length
      tensors.push({
        name: `${name}.${suffix}`,
        shape,
        type: "F16",
        data: () => normalFloat16Bytes(shape[0] * shape[1], deviation, mixSeed(seed, stream))
      })
    }
  }
  for (let block = 0; block < dimensions.blockCount; block++) {
    update(`blk.${block}.attn_q.weight`, embedding, embedding)
    update(`blk.${block}.attn_k.weight`, embedding, kvWidth)
    update(`blk.${block}.attn_v.weight`, embedding, kvWidth)
    update(`blk.${block}.attn_output.weight`, embedding, embedding)
    update(`blk.${block}.ffn_gate.weight`, embedding, dimensions.feedForwardLength)
    update(`blk.${block}.ffn_up.weight`, embedding, dimensions.feedForwardLength)
    update(`blk.${block}.ffn_down.weight`, dimensions.feedForwardLength, embedding)
  }
  if (dimensions.tiedOutput !== true) update("output.weight", embedding, dimensions.vocabSize)
  return tensors
}

/** The GGUF of a LoRA adapter as llama.cpp's `llama_adapter_lora_init` reads it. */
const syntheticLoraGguf = (base: ModelPreset, rank: number, seed: number): GgufFile => ({
  metadata: [
    ["general.architecture", GgufValue.string("llama")],
    ["general.type", GgufValue.string("adapter")],
    ["general.name", GgufValue.string(`weft-${base}-lora-r${rank}-s${seed}`)],
    ["general.alignment", GgufValue.uint32(GGUF_ALIGNMENT)],
    ["adapter.type", GgufValue.string("lora")],
    // Scale is `alpha / rank` times the scale a context applies it with: 1 here.
    ["adapter.lora.alpha", GgufValue.float32(rank)]
  ],
  tensors: loraTensors(ModelPresets[base], rank, seed)
})

/**
 * Writes a LoRA adapter GGUF for the generated `base` model: seeded f16 updates of every attention and feed-forward
 * matrix (and the output projection), deterministic in base, rank and seed. The file appears at `out` only once complete.
 */
export const generateLora = Effect.fn("generateLora")(function*(options: GenerateLoraOptions) {
  const rank = options.rank ?? DEFAULT_LORA_RANK
  const seed = options.seed ?? DEFAULT_LORA_SEED
  const out = path.resolve(options.out)
  yield* Effect.annotateCurrentSpan({ base: options.base, rank, seed, out })
  if (!isValidSeed(seed)) {
    return yield* new ModelWriteFailed({ path: out, reason: `seed must be an integer in [0, 2^32), got ${seed}` })
  }
  if (!Number.isInteger(rank) || rank < 1 || rank > MAX_LORA_RANK) {
    return yield* new ModelWriteFailed({ path: out, reason: `rank must be an integer in [1, ${MAX_LORA_RANK}], got ${rank}` })
  }
  return yield* writeGgufFile(out, syntheticLoraGguf(options.base, rank, seed))
})
