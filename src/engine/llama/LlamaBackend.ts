import { availableParallelism } from "node:os"
import { basename } from "node:path"
import { Effect, Layer, Schema } from "effect"
import { getLlama, LlamaGrammarEvaluationState, LlamaLogLevel, resolveChatWrapper, TokenBias } from "node-llama-cpp"
import type {
  ChatHistoryItem,
  CustomBatchingPrioritizationStrategy,
  LlamaContext,
  LlamaContextSequence,
  LlamaGrammar,
  LlamaModel,
  SequenceEvaluateOptions,
  Token
} from "node-llama-cpp"
import { Backend, ChatTemplateFailed, DecodeFailed, KvEraseFailed } from "../Backend.js"
import type { BackendShape, ChatMessage, Generation, ModelInfo, StepResult } from "../Backend.js"
import { prioritizeBySequence } from "../BatchPlan.js"
import { StepBatcher } from "../StepBatcher.js"
import type { StepParticipant } from "../StepBatcher.js"
import { defaultThreadTunerOptions, ThreadTuner } from "../ThreadTuner.js"
import type { GrammarConstraint, SamplingOptions } from "../SamplingOptions.js"

export interface LlamaBackendConfig {
  readonly modelPath: string
  /** Name reported as the model id; defaults to the file name without `.gguf`. */
  readonly modelId?: string | undefined
  /** Sequence slots in the one context. */
  readonly parallel: number
  /** KV cells per sequence. */
  readonly contextSize: number
  /** Most tokens one llama_decode evaluates; defaults to 512 (less for small contexts). */
  readonly batchSize?: number | undefined
  /**
   * Most prompt tokens one generation evaluates per decode step: a long prompt is prefilled in chunks interleaved
   * with the running generations' steps, so they stall by one chunk at most. Defaults to 128.
   */
  readonly prefillChunk?: number | undefined
  /** Defaults to the cores this process may run on: more threads than cores collapses llama.cpp's spinning barrier. */
  readonly threads?: number | undefined
  /**
   * Let each decode step use `threads` or half of it, whichever measures faster for steps of its width (see
   * `ThreadTuner`); `false` pins every step to `threads`. Defaults to true.
   */
  readonly tuneThreads?: boolean | undefined
  /**
   * llama.cpp's flash attention (fused attention kernels; on CPU about 6% more tokens/s at 16 streams on the bench
   * model). Defaults to true, as llama.cpp's own `auto` does where the backend supports it.
   */
  readonly flashAttention?: boolean | undefined
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

const defaultPrefillChunk = 128

/**
 * How long a decode step waits for a generation still handling its previous token (nothing decoding, no other
 * generation arriving meanwhile) before going without it. Between-steps work takes well under a millisecond per
 * generation; this only bounds the wait for one that stalls.
 */
const stepWaitMs = 5

/**
 * How long a slot readied for a new generation (`trim`) holds its place in the next decode step before `start` claims
 * it. The pool hands the slot to its request right after the trim, so this only bounds a request that never starts.
 */
const arrivalGraceMs = 50

/**
 * Orders each batch by sequence id, single-token decodes first (see `planBatch`). node-llama-cpp hands the strategy
 * batch items without their sequence ids; each item's `tokens` array is the very array of one entry of the
 * context's internal `_queuedDecodes` (LlamaContext.js `dispatchPendingBatch` → `getOrderedQueuedDecodes`), which
 * carries the id.
 */
const sequenceOrderStrategy = (context: () => LlamaContext | undefined): CustomBatchingPrioritizationStrategy =>
({ items, size }) => {
  // node-llama-cpp internal: LlamaContext#_queuedDecodes, entries { sequenceId, tokens, ... }.
  const queued = (context() as any)?._queuedDecodes as
    | ReadonlyArray<{ readonly sequenceId: number; readonly tokens: ReadonlyArray<Token> }>
    | undefined
  const sequenceOf = new Map<ReadonlyArray<Token>, number>()
  for (const decode of queued ?? []) sequenceOf.set(decode.tokens, decode.sequenceId)
  return prioritizeBySequence(items, size, (tokens) => sequenceOf.get(tokens))
}

/**
 * Routes every decode step's thread count through `tuner`. node-llama-cpp internal: LlamaContext#_ctx is the native
 * AddonContext; its dispatch loop (LlamaContext.js `dispatchPendingBatch` → `decodeTokenBatchItems`) calls
 * `_ctx.initBatch(tokens)`, `_ctx.addToBatch(...)`, `_ctx.setThreads(allocation)` and then `_ctx.decodeBatch()`, so a
 * proxy that sets the tuner's choice right before `decodeBatch` and times it sees every step. Its methods cannot be
 * overridden on the native object itself (they are read-only), hence the proxy.
 */
const tuneThreads = (context: LlamaContext, tuner: ThreadTuner): void => {
  // node-llama-cpp internal: LlamaContext#_ctx (AddonContext).
  const native = (context as any)._ctx as Record<PropertyKey, unknown> & {
    initBatch: (tokens: number) => unknown
    setThreads: (threads: number) => void
    decodeBatch: () => Promise<unknown>
  }
  let tokens = 0
  const bound = new Map<PropertyKey, unknown>()
  const initBatch = (size: number) => {
    tokens = size
    return native.initBatch(size)
  }
  const decodeBatch = () => {
    const threads = tuner.choose(tokens)
    native.setThreads(threads)
    const started = performance.now()
    const measured = tokens
    return native.decodeBatch().then((result) => {
      tuner.record(measured, threads, performance.now() - started)
      return result
    })
  }
  ;(context as any)._ctx = new Proxy(native, {
    get: (target, key) => {
      if (key === "initBatch") return initBatch
      if (key === "decodeBatch") return decodeBatch
      const value = target[key]
      if (typeof value !== "function") return value
      let method = bound.get(key)
      if (method === undefined) {
        method = value.bind(target)
        bound.set(key, method)
      }
      return method
    }
  })
}

/** `prompt` cut into pieces of at most `chunk` tokens (one empty piece for an empty prompt). */
const chunksOf = (prompt: ReadonlyArray<Token>, chunk: number): Array<Array<Token>> => {
  const chunks: Array<Array<Token>> = []
  for (let start = 0; start < prompt.length; start += chunk) chunks.push(prompt.slice(start, start + chunk))
  return chunks.length === 0 ? [[]] : chunks
}

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
        const prefillChunk = Math.max(1, config.prefillChunk ?? defaultPrefillChunk)
        let created: LlamaContext | undefined
        const context = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: () =>
              model.createContext({
                sequences: config.parallel,
                contextSize: config.contextSize,
                threads,
                flashAttention: config.flashAttention ?? true,
                batchSize: config.batchSize ?? Math.min(512, config.contextSize * config.parallel),
                batching: { itemPrioritizationStrategy: sequenceOrderStrategy(() => created) }
              }),
            catch: loadFailed
          }),
          (context) => Effect.promise(() => context.dispose())
        )
        created = context
        if (config.tuneThreads !== false) tuneThreads(context, new ThreadTuner(defaultThreadTunerOptions(threads)))
        const batcher = new StepBatcher({ maxWaitMs: stepWaitMs })
        // A request handed a slot takes part in the decode steps from the trim on, not only once it starts: the trim
        // waits for the step in flight (KV edits take node-llama-cpp's context lock), and were the running generations'
        // next step released meanwhile, the new prompt would wait for that whole step too before its prefill.
        const arriving = new Map<number, StepParticipant>()
        const arrive = (slot: number): StepParticipant => {
          arriving.get(slot)?.leave()
          const participant = batcher.join()
          arriving.set(slot, participant)
          return participant
        }
        const expireArrival = (slot: number, participant: StepParticipant) => {
          setTimeout(() => {
            if (arriving.get(slot) !== participant) return
            arriving.delete(slot)
            participant.leave()
          }, arrivalGraceMs).unref()
        }
        const claimArrival = (slot: number): StepParticipant => {
          const participant = arriving.get(slot)
          arriving.delete(slot)
          return participant ?? batcher.join()
        }
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
        // TokenBias.set skips end-of-generation tokens on purpose (node-llama-cpp dist/evaluator/TokenBias.js:41-48),
        // so `ignore_eos` writes its internal `_biases` map, which the sampler reads as llama.cpp logit biases.
        const biases = (banEndOfGeneration as unknown as { _biases: Map<Token, number> })._biases
        for (const token of endOfGenerationTokens) biases.set(token, -Infinity)

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
          // node-llama-cpp keeps one cell of each sequence free and asks for a context shift to use it
          // (dist/evaluator/LlamaContext/LlamaContext.js:1977), so one cell fewer is usable.
          contextSize: context.contextSize - 1,
          trainContextSize: model.trainContextSize,
          vocabSize,
          kvBytesPerToken: kvBytesPerToken(model),
          bosToken: model.tokens.bos ?? undefined,
          addBosToken: model.tokens.shouldPrependBosToken
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
            const options = evaluateOptions(sampling, generated, grammar)
            const chunks = chunksOf(prompt as ReadonlyArray<Token>, prefillChunk)
            const participant = claimArrival(slot)
            let iterator: AsyncGenerator<Token, void, Token | Array<Token> | undefined> | undefined
            yield* Effect.addFinalizer(() =>
              Effect.promise(async () => {
                participant.leave()
                await iterator?.return()
              })
            )
            // Every chunk but the last is evaluated without sampling, one per step; the last one samples the first token.
            // The first chunk goes out at once rather than waiting for the running generations' next step: it is
            // decoded right after the step in flight, and they wait for it just as they would have in a shared step
            // (llama.cpp splits a prompt from single-token decodes into a micro-batch of its own anyway), while the
            // new request gets its first token a step sooner.
            const step = async () => {
              let eager = true
              if (iterator === undefined) {
                for (const chunk of chunks.slice(0, -1)) {
                  await participant.step(() => sequence.evaluateWithoutGeneratingNewTokens(chunk), { eager })
                  eager = false
                }
                iterator = sequence.evaluate(chunks[chunks.length - 1]!, options)
              } else {
                eager = false
              }
              const current = iterator
              return participant.step(() => current.next(), { eager })
            }
            let prefilled = false
            const next = Effect.tryPromise({
              try: step,
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
            Effect.acquireUseRelease(
              Effect.sync(() => arrive(slot)),
              () =>
                Effect.tryPromise({
                  try: () => {
                    const sequence = sequences[slot]!
                    return sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }])
                  },
                  catch: (error) => new KvEraseFailed({ slot, message: errorMessage(error) })
                }),
              (participant) => Effect.sync(() => expireArrival(slot, participant))
            ),
          cells: (slot) => sequences[slot]!.nextTokenIndex,
          tokensOf: (slot) => sequences[slot]!.contextTokens
        } satisfies BackendShape
      })
    )
}
