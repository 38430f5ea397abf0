import { Context, Schema } from "effect"
import type { Effect, Scope } from "effect"
import type { GrammarConstraint, SamplingOptions } from "./SamplingOptions.js"
import type { ToolCallRecord, ToolCallSyntax, ToolFunction } from "./ToolCallSyntax.js"

/** What the scheduler needs to know about the loaded model. */
export interface ModelInfo {
  readonly id: string
  /** Number of sequence slots the context was created with. */
  readonly parallel: number
  /** KV cells available to one sequence (its context window). */
  readonly contextSize: number
  readonly trainContextSize: number
  readonly vocabSize: number
  /** Estimated KV cache bytes for one token in one sequence (K and V, every layer). */
  readonly kvBytesPerToken: number
  readonly bosToken: number | undefined
  /** Whether the model expects BOS before a raw (non-chat) prompt. */
  readonly addBosToken: boolean
  /** Length of the vectors `embed` returns (the model's native embedding size). */
  readonly embeddingSize: number
  /** Most tokens one input to `embed` may have. */
  readonly maxEmbeddingTokens: number
  /** The llama.cpp binary in use; absent for backends that are not llama.cpp. */
  readonly binary?: {
    readonly kind: "native" | "prebuilt"
    readonly release: string
    readonly cmakeOptions: Readonly<Record<string, string>>
    readonly fallbackReason?: string | undefined
    /** A native build's OpenMP wait policy, e.g. `OMP_WAIT_POLICY=PASSIVE (default)`. */
    readonly openMpWait?: string | undefined
    readonly decodeSteps?: DecodeSteps | undefined
    readonly weights?: WeightsPlacement | undefined
  } | undefined
}

/**
 * How a llama.cpp backend's decode steps reach the binary: `synchronous` (on the JS thread, Weft's native build),
 * `libuv` (node-llama-cpp's libuv jobs) or `evaluate` (node-llama-cpp's `sequence.evaluate`); see `--decode-path`.
 */
export type DecodeSteps = "synchronous" | "libuv" | "evaluate"

/** Where a llama.cpp backend's weights are: `mmap` (mapped from the file) or `memory` (read in); see `--mmap`. */
export type WeightsPlacement = "mmap" | "memory"

/** A token's log probability under the distribution it was sampled from. */
export interface TokenLogprob {
  readonly token: number
  readonly logprob: number
}

/** One sampled token's log probability and the most likely tokens of that step, most likely first. */
export interface StepLogprobs {
  readonly logprob: number
  readonly top: ReadonlyArray<TokenLogprob>
}

/** OpenAI's floor for a probability too small to take the log of (`log(0)` would serialize as `null`). */
export const logprobFloor = -9999

/** One decode step's outcome; `logprobs` only when the sampling options asked for them. */
export type StepResult =
  | { readonly _tag: "Token"; readonly token: number; readonly cells: number; readonly logprobs?: StepLogprobs | undefined }
  | { readonly _tag: "EndOfGeneration"; readonly token: number; readonly cells: number }

/** A generation running on a slot: each `next` runs one decode step (the first one also prefills the prompt). */
export interface Generation {
  /** Evaluates the pending input and samples the next token. Uninterruptible: a native decode cannot be pre-empted. */
  readonly next: Effect.Effect<StepResult, DecodeFailed>
}

/**
 * One chat turn, as OpenAI's `messages` carry it once content parts are joined: an assistant turn may carry the tool
 * calls it made, and a `tool` turn the result of one of them.
 */
export interface ChatMessage {
  readonly role: "system" | "user" | "assistant" | "tool"
  readonly content: string
  /** Only on assistant turns. */
  readonly toolCalls?: ReadonlyArray<ToolCallRecord> | undefined
  /** Only on tool turns: the call this is the result of. */
  readonly toolCallId?: string | undefined
}

/** A LoRA adapter to apply: its GGUF file and the scale it is applied with (1 is as trained). */
export interface AdapterSpec {
  readonly path: string
  readonly scale: number
}

/** How an engine applies LoRA adapters to its loaded model. */
export interface AdapterSupport {
  /** Loads `adapter`'s weights onto the model (once per file), failing when they do not fit it. */
  readonly check: (adapter: AdapterSpec) => Effect.Effect<void, AdapterLoadFailed>
  /**
   * A backend on the same loaded weights with `adapter` applied: a context of its own (its own slots and KV cells),
   * released with the scope.
   */
  readonly open: (adapter: AdapterSpec) => Effect.Effect<BackendShape, AdapterLoadFailed, Scope.Scope>
}

/** The seam between the scheduler and an inference engine. Slots are identified by their index `0 … parallel-1`. */
export interface BackendShape {
  readonly info: ModelInfo
  /** Fails with `PromptTooLarge`, without tokenizing, for a text too long to fit in the context whatever its tokens. */
  readonly tokenize: (
    text: string,
    options?: { readonly special?: boolean }
  ) => Effect.Effect<ReadonlyArray<number>, PromptTooLarge>
  /**
   * Text of `tokens`; `context` are the tokens before them, so leading spaces render as they would in the full text.
   * Special tokens render as their text only with `special` (by default they render as nothing).
   */
  readonly detokenize: (
    tokens: ReadonlyArray<number>,
    context?: ReadonlyArray<number>,
    options?: { readonly special?: boolean }
  ) => string
  /**
   * Renders a conversation with the model's own chat template, ending with the assistant's generation prompt; `tools`
   * are offered to the model as its template presents them.
   */
  readonly renderChat: (
    messages: ReadonlyArray<ChatMessage>,
    tools?: ReadonlyArray<ToolFunction>
  ) => Effect.Effect<ReadonlyArray<number>, ChatTemplateFailed | PromptTooLarge>
  /** How this model writes tool calls (the syntax `renderChat` teaches it when given tools). */
  readonly toolCallSyntax: ToolCallSyntax
  /**
   * Builds (or finds already built) the grammar for `constraint`, so a grammar the engine cannot parse is refused before
   * the request takes a slot; `start` then uses the same grammar.
   */
  readonly checkGrammar: (constraint: GrammarConstraint) => Effect.Effect<void, GrammarRejected>
  /** Starts generating on `slot` from `prompt`, appended after the cells the slot already holds; the scope closes
   * the native iterator (never the KV cells: the pool owns those). */
  readonly start: (
    slot: number,
    prompt: ReadonlyArray<number>,
    sampling: SamplingOptions
  ) => Effect.Effect<Generation, DecodeFailed, Scope.Scope>
  /** Erases every KV cell of `slot`. */
  readonly erase: (slot: number) => Effect.Effect<void, KvEraseFailed>
  /**
   * Readies `slot` for a new generation: erases its cells from position `keep` on (all of them for 0), keeping the
   * first `keep` tokens as a reusable prefix. The pool calls it only when handing the slot to a request, which then
   * `start`s on it, so an engine may prepare for that start here.
   */
  readonly trim: (slot: number, keep: number) => Effect.Effect<void, KvEraseFailed>
  /**
   * Makes slot `to` hold copies of the first `length` KV cells of slot `from` (its own cells are replaced), so a prompt
   * evaluated on one slot need not be evaluated again on another. False, with `to` erased, when the engine could not.
   * Both slots must be held by the caller's requests; `from` may be generating meanwhile. Uninterruptible, like a decode.
   */
  readonly copyPrefix: (from: number, to: number, length: number) => Effect.Effect<boolean, DecodeFailed>
  /** KV cells the engine itself reports for `slot` (the ground truth accounting is checked against). */
  readonly cells: (slot: number) => number
  /** The tokens whose KV cells `slot` holds, in position order. */
  readonly tokensOf: (slot: number) => ReadonlyArray<number>
  /**
   * One embedding per input (token arrays of 1 … `info.maxEmbeddingTokens` valid ids, checked by the caller), in input
   * order, each `info.embeddingSize` long and L2-normalized. Deterministic: the same tokens give the same vector.
   * Runs beside generation without taking a slot; the caller bounds how many run at once.
   */
  readonly embed: (inputs: ReadonlyArray<ReadonlyArray<number>>) => Effect.Effect<ReadonlyArray<Float32Array>, EmbeddingFailed>
  /**
   * Writes `slot`'s KV cells (and their tokens) to `file`; absent on engines that cannot. Restored by `loadSlot`.
   */
  readonly saveSlot?: ((slot: number, file: string) => Effect.Effect<void, KvFileFailed>) | undefined
  /** Replaces `slot`'s cells with those `saveSlot` wrote to `file`, returning their tokens. */
  readonly loadSlot?: ((slot: number, file: string) => Effect.Effect<ReadonlyArray<number>, KvFileFailed>) | undefined
  /** LoRA adapters on this model; absent on an engine without them, and on an adapter's own backend. */
  readonly adapters?: AdapterSupport | undefined
}

/** The inference engine behind the scheduler: `LlamaBackend` (node-llama-cpp) or `SimBackend` (deterministic, for tests). */
export class Backend extends Context.Tag("weft/Backend")<Backend, BackendShape>() {}

/** The engine failed while prefilling the prompt or decoding a token. */
export class DecodeFailed extends Schema.TaggedError<DecodeFailed>()("DecodeFailed", {
  slot: Schema.Number,
  stage: Schema.Literal("prefill", "decode"),
  message: Schema.String,
  /** What the engine threw, where it threw. */
  cause: Schema.optional(Schema.Defect)
}) {}

/** A slot's KV state could not be written to or read from its file. */
export class KvFileFailed extends Schema.TaggedError<KvFileFailed>()("KvFileFailed", {
  slot: Schema.Number,
  file: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/** A LoRA adapter could not be loaded onto its model, or its context could not be created. */
export class AdapterLoadFailed extends Schema.TaggedError<AdapterLoadFailed>()("AdapterLoadFailed", {
  path: Schema.String,
  message: Schema.String,
  /** What the engine threw. */
  cause: Schema.optional(Schema.Defect)
}) {}

/** The engine failed to compute an embedding. */
export class EmbeddingFailed extends Schema.TaggedError<EmbeddingFailed>()("EmbeddingFailed", {
  message: Schema.String,
  /** What the engine threw. */
  cause: Schema.optional(Schema.Defect)
}) {}

/** The engine could not erase a slot's KV cells. */
export class KvEraseFailed extends Schema.TaggedError<KvEraseFailed>()("KvEraseFailed", {
  slot: Schema.Number,
  message: Schema.String
}) {}

/** The model's chat template could not render the conversation. */
export class ChatTemplateFailed extends Schema.TaggedError<ChatTemplateFailed>()("ChatTemplateFailed", {
  message: Schema.String
}) {}

/** Grammar-constrained output that ended normally but does not validate against its schema (a grammar bug). */
export class StructuredOutputInvalid extends Schema.TaggedError<StructuredOutputInvalid>()("StructuredOutputInvalid", {
  /** Where the output breaks the schema, and how. */
  violation: Schema.String
}) {}

/** The engine could not build a grammar for a constraint (llama.cpp's grammar parser rejected it). */
export class GrammarRejected extends Schema.TaggedError<GrammarRejected>()("GrammarRejected", {
  message: Schema.String,
  /** What the engine threw. */
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * A prompt has more bytes than the context could hold even if every token were the vocabulary's longest, so it was
 * refused before any tokenizer saw it.
 */
export class PromptTooLarge extends Schema.TaggedError<PromptTooLarge>()("PromptTooLarge", {
  bytes: Schema.Number,
  maxBytes: Schema.Number,
  contextSize: Schema.Number
}) {}
