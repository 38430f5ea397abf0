import { randomUUID } from "node:crypto"
import * as fs from "node:fs/promises"
import { endianness } from "node:os"
import * as path from "node:path"
import { Effect, Schema } from "effect"
import { float16BitsToNumber, float32ToFloat16Bits } from "./Float16.js"
import { type GgufFile, type GgufTensor, GgufValue, GgufWriter, tensorElementCount } from "./GgufWriter.js"
import { headDimension, type ModelDimensions, type ModelPreset, ModelPresets } from "./ModelPresets.js"
import { SyntheticVocab } from "./SyntheticVocab.js"

/** A model file could not be written. */
export class ModelWriteFailed extends Schema.TaggedError<ModelWriteFailed>()("ModelWriteFailed", {
  path: Schema.String,
  reason: Schema.String
}) {}

/** A model file on disk. */
export interface GeneratedModel {
  readonly path: string
  readonly bytes: number
  readonly parameters: number
}

/** What to generate and where. */
export interface GenerateModelOptions {
  readonly preset: ModelPreset
  readonly out: string
  /** Seed of the weights (the tokenizer is the same for every seed); 42 when absent. */
  readonly seed?: number
  /** Type of the weight matrices: f16 (the default) or f32, which llama.cpp's trainer needs. */
  readonly weights?: WeightType | undefined
  /** Overrides the preset's training context (training works on windows of exactly this many tokens). */
  readonly contextLength?: number | undefined
}

/** Type of a generated model's weight matrices. */
export const WeightType = Schema.Literal("f16", "f32")
export type WeightType = typeof WeightType.Type

/** Seed used when none is given. */
export const DEFAULT_MODEL_SEED = 42

/**
 * ChatML with Hermes-style tools, as Qwen2.5's template has them (without its default system prompt): the tools are
 * listed in the system turn inside `<tools>…</tools>`, the assistant calls them as `<tool_call>{"name": …,
 * "arguments": …}</tool_call>`, and results come back as `<tool_response>…</tool_response>` in a user turn. Without
 * tools it renders exactly as plain ChatML after BOS (as node-llama-cpp's ChatML wrapper does for this model).
 */
export const CHATML_TEMPLATE = [
  "{{- bos_token }}",
  "{%- if tools %}",
  "{{- '<|im_start|>system\\n' }}",
  "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}",
  "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}",
  "{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}",
  "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}",
  "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within ' }}",
  "{{- '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}",
  "{%- endif %}",
  "{%- for message in messages %}",
  "{%- if message.role == 'system' and loop.first and tools %}",
  "{%- elif message.role == 'user' or message.role == 'system' or (message.role == 'assistant' and not message.tool_calls) %}",
  "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}",
  "{%- elif message.role == 'assistant' %}",
  "{{- '<|im_start|>' + message.role }}",
  "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}",
  "{%- for tool_call in message.tool_calls %}",
  "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}",
  "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}",
  "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}",
  "{{- '}\\n</tool_call>' }}",
  "{%- endfor %}",
  "{{- '<|im_end|>\\n' }}",
  "{%- elif message.role == 'tool' %}",
  "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}",
  "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}",
  "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}",
  "{%- endif %}",
  "{%- endfor %}",
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
].join("")

/** Tensor data alignment of the files Weft writes. */
export const GGUF_ALIGNMENT = 32
const LLAMA_FTYPE_MOSTLY_F16 = 1
const LLAMA_FTYPE_ALL_F32 = 0

// Irwin–Hall: the sum of the four bytes of a uniform uint32 is close to normal, with mean 510 and this deviation.
const FOUR_BYTE_SUM_MEAN = 510
const FOUR_BYTE_SUM_DEVIATION = Math.sqrt(4 * (256 * 256 - 1) / 12)

/** splitmix32-style mixing, so neighbouring (seed, tensor) pairs start from unrelated PRNG states. */
export const mixSeed = (seed: number, stream: number): number => {
  let x = (seed ^ Math.imul(stream + 1, 0x9e3779b9)) >>> 0
  x = Math.imul(x ^ (x >>> 16), 0x21f0aaad)
  x = Math.imul(x ^ (x >>> 15), 0x735a2d97)
  return (x ^ (x >>> 15)) >>> 0
}

/** Bytes of `count` approximately normal values with standard deviation `deviation`, as f16 or f32. */
const normalBytes = (count: number, deviation: number, seed: number, weights: WeightType): Uint8Array => {
  if (weights === "f32") {
    const halves = new Uint16Array(normalFloat16Bytes(count, deviation, seed).buffer)
    // The f16 draws widened exactly, so an f32 model holds the same weights as its f16 twin.
    return new Uint8Array(Float32Array.from(halves, float16BitsToNumber).buffer)
  }
  return normalFloat16Bytes(count, deviation, seed)
}

/** f16 bytes of `count` approximately normal values with standard deviation `deviation`. */
export const normalFloat16Bytes = (count: number, deviation: number, seed: number): Uint8Array => {
  // Only 1021 sums are possible, so convert each to half once and look it up per element.
  const halfOfSum = new Uint16Array(4 * 255 + 1)
  for (let sum = 0; sum < halfOfSum.length; sum++) {
    halfOfSum[sum] = float32ToFloat16Bits((sum - FOUR_BYTE_SUM_MEAN) / FOUR_BYTE_SUM_DEVIATION * deviation)
  }
  const halves = new Uint16Array(count)
  let state = seed | 0
  for (let i = 0; i < count; i++) {
    // mulberry32, inlined: this loop runs ~100M times for the bench preset.
    state = (state + 0x6d2b79f5) | 0
    let t = Math.imul(state ^ (state >>> 15), state | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    t ^= t >>> 14
    halves[i] = halfOfSum[(t & 0xff) + ((t >>> 8) & 0xff) + ((t >>> 16) & 0xff) + ((t >>> 24) & 0xff)]!
  }
  return new Uint8Array(halves.buffer)
}

const onesFloat32Bytes = (count: number): Uint8Array => new Uint8Array(new Float32Array(count).fill(1).buffer)

/** The tensors of a llama model with seeded weights; each tensor's data is generated only when the writer asks. */
const llamaTensors = (dimensions: ModelDimensions, seed: number, weights: WeightType): Array<GgufTensor> => {
  const embedding = dimensions.embeddingLength
  const kvWidth = dimensions.headCountKv * headDimension(dimensions)
  const tensors: Array<GgufTensor> = []
  const matrix = (name: string, inner: number, outer: number, deviation: number): void => {
    const stream = tensors.length
    tensors.push({
      name,
      shape: [inner, outer],
      type: weights === "f32" ? "F32" : "F16",
      data: () => normalBytes(inner * outer, deviation, mixSeed(seed, stream), weights)
    })
  }
  const norm = (name: string): void => {
    tensors.push({ name, shape: [embedding], type: "F32", data: () => onesFloat32Bytes(embedding) })
  }
  // Fan-in scaling keeps activations O(1) through every block.
  const fromEmbedding = 1 / Math.sqrt(embedding)
  const fromFeedForward = 1 / Math.sqrt(dimensions.feedForwardLength)

  // A tied embedding also projects the logits, so it gets the output's scale (below) rather than unit variance.
  const tied = dimensions.tiedOutput === true
  matrix("token_embd.weight", embedding, dimensions.vocabSize, tied ? 2 * fromEmbedding : 1)
  for (let block = 0; block < dimensions.blockCount; block++) {
    norm(`blk.${block}.attn_norm.weight`)
    matrix(`blk.${block}.attn_q.weight`, embedding, embedding, fromEmbedding)
    matrix(`blk.${block}.attn_k.weight`, embedding, kvWidth, fromEmbedding)
    matrix(`blk.${block}.attn_v.weight`, embedding, kvWidth, fromEmbedding)
    matrix(`blk.${block}.attn_output.weight`, embedding, embedding, fromEmbedding)
    norm(`blk.${block}.ffn_norm.weight`)
    matrix(`blk.${block}.ffn_gate.weight`, embedding, dimensions.feedForwardLength, fromEmbedding)
    matrix(`blk.${block}.ffn_up.weight`, embedding, dimensions.feedForwardLength, fromEmbedding)
    matrix(`blk.${block}.ffn_down.weight`, dimensions.feedForwardLength, embedding, fromFeedForward)
  }
  norm("output_norm.weight")
  // Logits with a standard deviation of ~2 give a varied but not flat next-token distribution.
  if (!tied) matrix("output.weight", embedding, dimensions.vocabSize, 2 * fromEmbedding)
  return tensors
}

/** The complete GGUF contents of a synthetic llama model. */
const syntheticLlamaGguf = (preset: ModelPreset, seed: number, weights: WeightType, contextLength: number | undefined): GgufFile => {
  const dimensions = { ...ModelPresets[preset], ...(contextLength === undefined ? {} : { contextLength }) }
  const vocab = SyntheticVocab.make(dimensions.vocabSize)
  return {
    metadata: [
      ["general.architecture", GgufValue.string("llama")],
      ["general.name", GgufValue.string(`weft-${preset}-s${seed}`)],
      ["general.alignment", GgufValue.uint32(GGUF_ALIGNMENT)],
      ["general.file_type", GgufValue.uint32(weights === "f32" ? LLAMA_FTYPE_ALL_F32 : LLAMA_FTYPE_MOSTLY_F16)],
      ["llama.vocab_size", GgufValue.uint32(dimensions.vocabSize)],
      ["llama.context_length", GgufValue.uint32(dimensions.contextLength)],
      ["llama.embedding_length", GgufValue.uint32(dimensions.embeddingLength)],
      ["llama.block_count", GgufValue.uint32(dimensions.blockCount)],
      ["llama.feed_forward_length", GgufValue.uint32(dimensions.feedForwardLength)],
      ["llama.rope.dimension_count", GgufValue.uint32(headDimension(dimensions))],
      ["llama.rope.freq_base", GgufValue.float32(dimensions.ropeFreqBase)],
      ["llama.attention.head_count", GgufValue.uint32(dimensions.headCount)],
      ["llama.attention.head_count_kv", GgufValue.uint32(dimensions.headCountKv)],
      ["llama.attention.layer_norm_rms_epsilon", GgufValue.float32(dimensions.rmsNormEpsilon)],
      ["tokenizer.ggml.model", GgufValue.string("llama")],
      ["tokenizer.ggml.tokens", GgufValue.array("string", vocab.tokens)],
      ["tokenizer.ggml.scores", GgufValue.array("float32", vocab.scores)],
      ["tokenizer.ggml.token_type", GgufValue.array("int32", vocab.tokenTypes)],
      ["tokenizer.ggml.bos_token_id", GgufValue.uint32(vocab.bosTokenId)],
      ["tokenizer.ggml.eos_token_id", GgufValue.uint32(vocab.eosTokenId)],
      ["tokenizer.ggml.unknown_token_id", GgufValue.uint32(vocab.unknownTokenId)],
      ["tokenizer.ggml.add_bos_token", GgufValue.bool(true)],
      ["tokenizer.ggml.add_eos_token", GgufValue.bool(false)],
      ["tokenizer.chat_template", GgufValue.string(CHATML_TEMPLATE)]
    ],
    tensors: llamaTensors(dimensions, seed, weights)
  }
}

const describe = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

const writeFully = async (handle: fs.FileHandle, chunk: Uint8Array): Promise<void> => {
  let written = 0
  while (written < chunk.byteLength) {
    const { bytesWritten } = await handle.write(chunk, written, chunk.byteLength - written)
    written += bytesWritten
  }
}

/** Writes `chunks` to `target` one at a time, pulling the next only after the previous is on disk. */
const writeChunks = (
  target: string,
  chunks: Iterable<Uint8Array>,
  failed: (cause: unknown) => ModelWriteFailed
): Effect.Effect<void, ModelWriteFailed> =>
  Effect.acquireUseRelease(
    Effect.tryPromise({ try: () => fs.open(target, "w"), catch: failed }),
    (handle) =>
      Effect.gen(function*() {
        // A plain loop, not Effect.forEach: forEach would materialise every tensor up front.
        for (const chunk of chunks) yield* Effect.tryPromise({ try: () => writeFully(handle, chunk), catch: failed })
      }),
    (handle) => Effect.promise(() => handle.close().catch(() => undefined))
  )

/** Seeds are 32-bit unsigned integers. */
export const isValidSeed = (seed: number): boolean => Number.isInteger(seed) && seed >= 0 && seed <= 0xffffffff

/**
 * Writes a llama-architecture GGUF with a SentencePiece-style tokenizer, ChatML template and seeded f16 weights.
 * The same preset and seed always give the same bytes. The file appears at `out` only once complete.
 */
export const generateModel = Effect.fn("generateModel")(function*(options: GenerateModelOptions) {
  const seed = options.seed ?? DEFAULT_MODEL_SEED
  const out = path.resolve(options.out)
  yield* Effect.annotateCurrentSpan({ preset: options.preset, seed, out })
  if (!isValidSeed(seed)) {
    return yield* new ModelWriteFailed({ path: out, reason: `seed must be an integer in [0, 2^32), got ${seed}` })
  }
  if (endianness() !== "LE") {
    return yield* new ModelWriteFailed({ path: out, reason: "tensor data is laid out from typed arrays, which needs a little-endian host" })
  }
  return yield* writeGgufFile(out, syntheticLlamaGguf(options.preset, seed, options.weights ?? "f16", options.contextLength))
})

/** Writes `file` to `out` (its directory created), appearing there only once complete. */
export const writeGgufFile = (out: string, file: GgufFile): Effect.Effect<GeneratedModel, ModelWriteFailed> =>
  Effect.gen(function*() {
    const parameters = file.tensors.reduce((total, tensor) => total + tensorElementCount(tensor), 0)
    const partial = `${out}.${process.pid}-${randomUUID().slice(0, 8)}.partial`
    const failed = (cause: unknown) => new ModelWriteFailed({ path: out, reason: describe(cause) })

    yield* Effect.tryPromise({ try: () => fs.mkdir(path.dirname(out), { recursive: true }), catch: failed })
    yield* writeChunks(partial, GgufWriter.chunks(file), failed).pipe(
      Effect.zipRight(Effect.tryPromise({ try: () => fs.rename(partial, out), catch: failed })),
      Effect.onExit((exit) => exit._tag === "Success" ? Effect.void : Effect.promise(() => fs.rm(partial, { force: true })))
    )
    const { size } = yield* Effect.tryPromise({ try: () => fs.stat(out), catch: failed })
    return { path: out, bytes: size, parameters } satisfies GeneratedModel
  })

/** File name `ensureModel` uses for a preset and seed. */
export const modelFileName = (preset: ModelPreset, seed: number = DEFAULT_MODEL_SEED): string =>
  `weft-${preset}-s${seed}.gguf`

/** Path of `dir/weft-{preset}-s{seed}.gguf`, generating the file first only if it does not exist yet. */
export const ensureModel = Effect.fn("ensureModel")(function*(
  preset: ModelPreset,
  dir: string,
  seed: number = DEFAULT_MODEL_SEED
) {
  const modelPath = path.resolve(dir, modelFileName(preset, seed))
  const exists = yield* Effect.promise(() => fs.access(modelPath).then(() => true, () => false))
  if (exists) return modelPath
  const generated = yield* generateModel({ preset, out: modelPath, seed })
  return generated.path
})
