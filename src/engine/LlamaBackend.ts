import { availableParallelism } from "node:os"
import { basename } from "node:path"
import { Effect, Layer, Schema } from "effect"
import { getLlama, LlamaGrammarEvaluationState, LlamaLogLevel, resolveChatWrapper, TokenBias } from "node-llama-cpp"
import type {
  ChatHistoryItem,
  LlamaContextSequence,
  LlamaGrammar,
  LlamaModel,
  SequenceEvaluateOptions,
  Token
} from "node-llama-cpp"
import { Backend, ChatTemplateFailed, DecodeFailed, KvEraseFailed } from "./Backend.js"
import type { BackendShape, ChatMessage, Generation, ModelInfo, StepResult } from "./Backend.js"
import type { GrammarConstraint, SamplingOptions } from "./SamplingOptions.js"

export interface LlamaBackendConfig {
  readonly modelPath: string
  /** Name reported as the model id; defaults to the file name without `.gguf`. */
  readonly modelId?: string | undefined
  /** Sequence slots in the one context. */
  readonly parallel: number
  /** KV cells per sequence. */
  readonly contextSize: number
  /** Tokens per llama_decode call; defaults to node-llama-cpp's (512, or less for small contexts). */
  readonly batchSize?: number | undefined
  /** Defaults to the cores this process may run on: more threads than cores collapses llama.cpp's spinning barrier. */
  readonly threads?: number | undefined
  readonly gpu?: "auto" | false | undefined
}

/** The model file could not be loaded, or its context could not be created. */
export class ModelLoadFailed extends Schema.TaggedError<ModelLoadFailed>()("ModelLoadFailed", {
  path: Schema.String,
  message: Schema.String
}) {}

const errorMessage = (error: unknown) => (error instanceof Error ? error.message : String(error))

/** How many penalised tokens llama.cpp looks back over (its `penalty_last_n` default). */
const penaltyWindow = 64

/** K and V of every layer, f16 (node-llama-cpp's default KV type). */
const kvBytesPerToken = (model: LlamaModel): number => {
  const metadata = model.fileInfo.architectureMetadata as {
    block_count?: number
    embedding_length?: number
    attention?: { head_count?: number; head_count_kv?: number | Array<number> }
  }
  const layers = metadata.block_count ?? 0
  const embedding = metadata.embedding_length ?? 0
  const heads = metadata.attention?.head_count ?? 1
  const kvHeadsRaw = metadata.attention?.head_count_kv ?? heads
  const kvHeads = Array.isArray(kvHeadsRaw) ? Math.max(...kvHeadsRaw) : kvHeadsRaw
  const bytesPerValue = 2
  return 2 * layers * (embedding / heads) * kvHeads * bytesPerValue
}

/** `Backend` on node-llama-cpp: one model, one context with `parallel` sequences, driven token by token. */
export const LlamaBackend = {
  layer: (config: LlamaBackendConfig): Layer.Layer<Backend, ModelLoadFailed> =>
    Layer.scoped(
      Backend,
      Effect.gen(function*() {
        const threads = config.threads ?? availableParallelism()
        const loadFailed = (error: unknown) => new ModelLoadFailed({ path: config.modelPath, message: errorMessage(error) })
        const llama = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: () =>
              getLlama({
                build: "never",
                gpu: config.gpu ?? "auto",
                maxThreads: threads,
                logLevel: LlamaLogLevel.error,
                progressLogs: false
              }),
            catch: loadFailed
          }),
          (llama) => Effect.promise(() => llama.dispose())
        )
        const model = yield* Effect.acquireRelease(
          Effect.tryPromise({ try: () => llama.loadModel({ modelPath: config.modelPath }), catch: loadFailed }),
          (model) => Effect.promise(() => model.dispose())
        )
        const context = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: () =>
              model.createContext({
                sequences: config.parallel,
                contextSize: config.contextSize,
                threads,
                ...(config.batchSize === undefined ? {} : { batchSize: config.batchSize })
              }),
            catch: loadFailed
          }),
          (context) => Effect.promise(() => context.dispose())
        )
        const sequences: Array<LlamaContextSequence> = Array.from({ length: config.parallel }, () =>
          context.getSequence({
            // The scheduler ends a full sequence with `length`; a shift here would be a scheduler bug, never silent.
            contextShift: {
              strategy: () => {
                throw new Error("context shift requested: the sequence is full")
              }
            }
          })
        )

        const vocabSize = (model.fileInfo.architectureMetadata as { vocab_size?: number }).vocab_size ??
          (model.fileInfo.metadata as { tokenizer?: { ggml?: { tokens?: ReadonlyArray<string> } } }).tokenizer?.ggml?.tokens
            ?.length ?? 0
        const endOfGenerationTokens: Array<Token> = []
        for (let token = 0; token < vocabSize; token++) {
          if (model.isEogToken(token as Token)) endOfGenerationTokens.push(token as Token)
        }
        const banEndOfGeneration = new TokenBias(model.tokenizer)
        for (const token of endOfGenerationTokens) banEndOfGeneration.set(token, "never")

        const grammars = new Map<string, Promise<LlamaGrammar>>()
        const grammarFor = (constraint: GrammarConstraint) => {
          const key = constraint._tag === "Json" ? "json" : JSON.stringify(constraint.schema)
          let grammar = grammars.get(key)
          if (grammar === undefined) {
            grammar = constraint._tag === "Json"
              ? llama.getGrammarFor("json")
              // The JSON schema was validated by the HTTP layer; node-llama-cpp's type only narrows what it supports.
              : llama.createGrammarForJsonSchema(constraint.schema as never)
            grammars.set(key, grammar)
            grammar.catch(() => grammars.delete(key))
          }
          return grammar
        }

        const chatWrapper = resolveChatWrapper(model)
        const renderChat = (messages: ReadonlyArray<ChatMessage>) =>
          Effect.try({
            try: () => {
              const chatHistory: Array<ChatHistoryItem> = messages.map((message) =>
                message.role === "assistant"
                  ? { type: "model", response: [message.content] }
                  : message.role === "system"
                  ? { type: "system", text: message.content }
                  : { type: "user", text: message.content }
              )
              // An empty model turn at the end makes the template emit the assistant's generation prompt.
              chatHistory.push({ type: "model", response: [] })
              const { contextText } = chatWrapper.generateContextState({ chatHistory })
              return contextText.tokenize(model.tokenizer)
            },
            catch: (error) => new ChatTemplateFailed({ message: errorMessage(error) })
          })

        const info: ModelInfo = {
          id: config.modelId ?? basename(config.modelPath).replace(/\.gguf$/i, ""),
          parallel: config.parallel,
          contextSize: context.contextSize,
          trainContextSize: model.trainContextSize,
          vocabSize,
          kvBytesPerToken: kvBytesPerToken(model),
          bosToken: model.tokens.bos ?? undefined
        }

        const evaluateOptions = (sampling: SamplingOptions, generated: Array<Token>, grammar: LlamaGrammar | undefined) => {
          const options: SequenceEvaluateOptions = {
            temperature: sampling.temperature,
            topK: sampling.topK,
            topP: sampling.topP,
            minP: sampling.minP,
            seed: sampling.seed,
            yieldEogToken: true
          }
          if (sampling.ignoreEos) options.tokenBias = banEndOfGeneration
          if (grammar !== undefined) options.grammarEvaluationState = new LlamaGrammarEvaluationState({ model, grammar })
          if (sampling.repeatPenalty !== 1 || sampling.presencePenalty !== 0 || sampling.frequencyPenalty !== 0) {
            options.repeatPenalty = {
              punishTokens: () => generated.slice(-penaltyWindow),
              maxPunishTokens: penaltyWindow,
              penalty: sampling.repeatPenalty,
              presencePenalty: sampling.presencePenalty,
              frequencyPenalty: sampling.frequencyPenalty
            }
          }
          return options
        }

        const start: BackendShape["start"] = (slot, prompt, sampling) =>
          Effect.gen(function*() {
            const sequence = sequences[slot]!
            const grammar = sampling.grammar === undefined
              ? undefined
              : yield* Effect.tryPromise({
                try: () => grammarFor(sampling.grammar!),
                catch: (error) => new DecodeFailed({ slot, stage: "prefill", message: `grammar: ${errorMessage(error)}` })
              })
            const generated: Array<Token> = []
            const iterator = sequence.evaluate(prompt as Array<Token>, evaluateOptions(sampling, generated, grammar))
            yield* Effect.addFinalizer(() => Effect.promise(() => iterator.return()))
            let prefilled = false
            const next = Effect.tryPromise({
              try: () => iterator.next(),
              catch: (error) =>
                new DecodeFailed({ slot, stage: prefilled ? "decode" : "prefill", message: errorMessage(error) })
            }).pipe(
              Effect.flatMap((result): Effect.Effect<StepResult, DecodeFailed> => {
                prefilled = true
                if (result.done === true) {
                  return new DecodeFailed({ slot, stage: "decode", message: "the sampler produced no token" })
                }
                const token = result.value
                const cells = sequence.nextTokenIndex
                if (model.isEogToken(token)) return Effect.succeed({ _tag: "EndOfGeneration", token, cells })
                generated.push(token)
                return Effect.succeed({ _tag: "Token", token, cells })
              }),
              Effect.uninterruptible
            )
            return { next } satisfies Generation
          })

        return {
          info,
          tokenize: (text, options) => Effect.sync(() => model.tokenize(text, options?.special ?? false)),
          renderChat,
          detokenize: (tokens, context) =>
            model.detokenize(tokens as ReadonlyArray<Token>, false, context as ReadonlyArray<Token> | undefined),
          start,
          erase: (slot) =>
            Effect.tryPromise({
              try: () => sequences[slot]!.clearHistory(),
              catch: (error) => new KvEraseFailed({ slot, message: errorMessage(error) })
            }),
          trim: (slot, keep) =>
            Effect.tryPromise({
              try: () => {
                const sequence = sequences[slot]!
                return sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }])
              },
              catch: (error) => new KvEraseFailed({ slot, message: errorMessage(error) })
            }),
          cells: (slot) => sequences[slot]!.nextTokenIndex,
          tokensOf: (slot) => sequences[slot]!.contextTokens
        } satisfies BackendShape
      })
    )
}
