import * as fs from "node:fs"
import { availableParallelism } from "node:os"
import { basename } from "node:path"
import { Effect, Layer, Option, Schema } from "effect"
import type { Scope } from "effect"
import type { CustomBatchingPrioritizationStrategy, LlamaContext, LlamaContextSequence, LlamaModel, SequenceEvaluateOptions, Token, TokenBias } from "node-llama-cpp"
import { AdapterLoadFailed, Backend, DecodeFailed, KvEraseFailed, KvFileFailed } from "../Backend.js"
import type { AdapterSpec, BackendShape, DecodeSteps, Generation, StepResult, WeightsPlacement } from "../Backend.js"
import { prioritizeBySequence } from "../BatchPlan.js"
import { StepBatcher } from "../StepBatcher.js"
import type { StepParticipant } from "../StepBatcher.js"
import { stepLogprobs } from "../StepLogprobs.js"
import { defaultThreadTunerOptions, ThreadTuner } from "../ThreadTuner.js"
import { makeBoundedTokenizer } from "./BoundedTokenizer.js"
import { chatRenderer } from "./ChatRenderer.js"
import { dispatchOnceStepQueued } from "./DecodeDispatch.js"
import { makeLlamaEmbedder } from "./Embeddings.js"
import { errorMessage } from "./errorMessage.js"
import { evaluateOptions } from "./EvaluateOptions.js"
import { GrammarCache } from "./GrammarCache.js"
import type { GrammarCacheLimits } from "./GrammarCache.js"
import { loadLlamaBinary, mapsWeights } from "./LlamaBinary.js"
import type { BinaryPreference, LlamaBinaryInfo, MmapPreference } from "./LlamaBinary.js"
import type { OpenMpWait } from "./OpenMpWait.js"
import { DirectSteps } from "./DirectSteps.js"
import type { SampledToken } from "./DirectSteps.js"
import {
  copySequencePrefix,
  endOfGenerationBan,
  interceptDecodes,
  loadLoraOnto,
  nativeContextOf,
  newNativeSampler,
  queuedDecodesOf,
  samplerConfigOf,
  sequenceStateOf,
  withContextLock
} from "./LlamaInternals.js"
import { llamaModelInfo, llamaVocabSize } from "./LlamaModelInfo.js"
import { estimateLlamaMemory } from "./MemoryEstimate.js"
import { MemoryManager } from "../../memory/MemoryManager.js"
import { ModelDoesNotFit } from "../../memory/ModelDoesNotFit.js"
import { makeSlotArrivals } from "./SlotArrivals.js"

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
  /** Which llama.cpp binary to load; defaults to `auto`, the native build when one loads. */
  readonly binary?: BinaryPreference | undefined
  /** How a native build's OpenMP threads wait (see `OpenMpWait`); the environment's variables, else passive, when unset. */
  readonly openMpWait?: OpenMpWait | undefined
  /** Whether weights are mapped from the file or read into memory (see `mapsWeights`); defaults to `auto`. */
  readonly mmap?: MmapPreference | undefined
  /** Bounds of the cache of JSON-schema grammars (client input); defaults to 256 entries and 64 MiB. */
  readonly grammarCache?: GrammarCacheLimits | undefined
  /**
   * Issue decode steps straight to the native context (`DirectSteps`) rather than through node-llama-cpp's
   * `sequence.evaluate`. Defaults to true; models whose KV needs node-llama-cpp's checkpoints (sliding-window,
   * hybrid and recurrent ones) always go through `evaluate`.
   */
  readonly directSteps?: boolean | undefined
  /**
   * Direct steps decode and sample on the JS thread when the binary can (Weft's native build); see
   * `DirectStepsOptions.synchronous`. Defaults to true.
   */
  readonly synchronousSteps?: boolean | undefined
}

/** The model file could not be loaded, or its context could not be created. */
export class ModelLoadFailed extends Schema.TaggedError<ModelLoadFailed>()("ModelLoadFailed", {
  path: Schema.String,
  message: Schema.String,
  /** What node-llama-cpp threw. */
  cause: Schema.optional(Schema.Defect)
}) {}

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
 * context's queued decodes (see `queuedDecodesOf`), which carry the id.
 */
const sequenceOrderStrategy = (context: () => LlamaContext | undefined): CustomBatchingPrioritizationStrategy =>
({ items, size }) => {
  const created = context()
  const queued = created === undefined ? [] : queuedDecodesOf(created)
  const sequenceOf = new Map<ReadonlyArray<Token>, number>()
  for (const decode of queued) sequenceOf.set(decode.tokens, decode.sequenceId)
  return prioritizeBySequence(items, size, (tokens) => sequenceOf.get(tokens))
}

/** `prompt` cut into pieces of at most `chunk` tokens (one empty piece for an empty prompt). */
const chunksOf = (prompt: ReadonlyArray<Token>, chunk: number): Array<Array<Token>> => {
  const chunks: Array<Array<Token>> = []
  for (let start = 0; start < prompt.length; start += chunk) chunks.push(prompt.slice(start, start + chunk))
  return chunks.length === 0 ? [[]] : chunks
}

/**
 * A generation's steps, in the order both ways of stepping take them: the first call evaluates every chunk of the
 * prompt but the last without sampling, one per step, then `sample(last chunk)`; later calls `sample(undefined)`, which
 * samples after the previous token. The first chunk goes out at once rather than waiting for the running generations'
 * next step: it is decoded right after the step in flight, and they wait for it just as they would have in a shared
 * step (llama.cpp splits a prompt from single-token decodes into a micro-batch of its own anyway), while the new
 * request gets its first token a step sooner.
 */
const promptThenTokens = <A>(
  participant: StepParticipant,
  chunks: ReadonlyArray<ReadonlyArray<Token>>,
  evaluate: (chunk: ReadonlyArray<Token>) => Promise<unknown>,
  sample: (last: ReadonlyArray<Token> | undefined) => Promise<A>
): () => Promise<A> => {
  let prefilled = false
  return async () => {
    let eager = !prefilled
    let last: ReadonlyArray<Token> | undefined
    if (!prefilled) {
      for (const chunk of chunks.slice(0, -1)) {
        await participant.step(() => evaluate(chunk), { eager })
        eager = false
      }
      prefilled = true
      last = chunks[chunks.length - 1]!
    }
    return participant.step(() => sample(last), { eager })
  }
}

/** What every context on one loaded model shares: the model, its tokenizer, grammars and embedder. */
interface LoadedModel {
  readonly model: LlamaModel
  readonly config: LlamaBackendConfig
  readonly threads: number
  readonly prefillChunk: number
  readonly embedder: Effect.Effect.Success<ReturnType<typeof makeLlamaEmbedder>>
  readonly tokenizer: Effect.Effect.Success<ReturnType<typeof makeBoundedTokenizer>>
  readonly grammars: GrammarCache
  readonly banEndOfGeneration: TokenBias
  readonly id: string
  readonly binary: LlamaBinaryInfo & { readonly weights: WeightsPlacement }
  /** node-llama-cpp's estimate of one context's RAM (KV cache and compute buffers); known when memory is accounted. */
  readonly contextBytes: number | undefined
}

/**
 * A backend on its own context of `loaded`'s model (with `adapter` applied when given): `parallel` sequences driven
 * token by token. The context is disposed with the scope; the model is not.
 */
const contextBackend = (
  loaded: LoadedModel,
  adapter: AdapterSpec | undefined
): Effect.Effect<BackendShape, ModelLoadFailed, Scope.Scope> =>
  Effect.gen(function*() {
    const { config, model, prefillChunk, threads } = loaded
    const loadFailed = (error: unknown) =>
      new ModelLoadFailed({ path: adapter?.path ?? config.modelPath, message: errorMessage(error), cause: error })
    let created: LlamaContext | undefined
    const batcher = new StepBatcher({ maxWaitMs: stepWaitMs })
    const dispatchSchedule = dispatchOnceStepQueued({
      queued: () => (created === undefined ? 0 : queuedDecodesOf(created).length),
      released: () => batcher.stats().inflight
    })
    const context = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () =>
          model.createContext({
            sequences: config.parallel,
            contextSize: config.contextSize,
            threads,
            flashAttention: config.flashAttention ?? true,
            batchSize: config.batchSize ?? Math.min(512, config.contextSize * config.parallel),
            batching: { itemPrioritizationStrategy: sequenceOrderStrategy(() => created), dispatchSchedule },
            ...(adapter === undefined ? {} : { lora: { adapters: [{ filePath: adapter.path, scale: adapter.scale }] } })
          }),
        catch: loadFailed
      }),
      (context) => Effect.promise(() => context.dispose())
    )
    created = context
    if (config.tuneThreads !== false) interceptDecodes(context, new ThreadTuner(defaultThreadTunerOptions(threads)))
    const arrivals = yield* makeSlotArrivals(batcher, arrivalGraceMs)
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
    const { embedder, grammars, tokenizer } = loaded
    const direct = config.directSteps !== false && sequences.every((sequence) => !sequence.needsCheckpoints)
      ? new DirectSteps(nativeContextOf(context), {
        batchSize: context.batchSize,
        contextSize: context.contextSize,
        exclusive: (use) => withContextLock(context, use),
        synchronous: config.synchronousSteps !== false
      })
      : undefined

    const decodeSteps: DecodeSteps = direct === undefined ? "evaluate" : direct.isSynchronous ? "synchronous" : "libuv"
    const info = {
      ...llamaModelInfo(loaded.id, config.parallel, model, context),
      embeddingSize: embedder.size,
      maxEmbeddingTokens: embedder.maxInputTokens,
      binary: { ...loaded.binary, decodeSteps }
    }

    /** A sampled token and the cells its sequence then holds. */
    type Stepped = SampledToken & { readonly cells: number }

    /** What `start` hands each way of stepping a generation. */
    interface Stepping {
      readonly sequence: LlamaContextSequence
      readonly chunks: ReadonlyArray<ReadonlyArray<Token>>
      readonly options: SequenceEvaluateOptions
      readonly participant: StepParticipant
      readonly probabilities: boolean
    }

    /** Steps through node-llama-cpp's `sequence.evaluate`. */
    const evaluateStepper = (
      { chunks, options, participant, probabilities, sequence }: Stepping
    ): Effect.Effect<() => Promise<Stepped | undefined>, never, Scope.Scope> =>
      Effect.gen(function*() {
        let iterator:
          | AsyncGenerator<{ readonly token: Token; readonly probabilities?: Map<Token, number> }, void, void | Token | Array<Token>>
          | undefined
        yield* Effect.addFinalizer(() => Effect.promise(async () => void (await iterator?.return())))
        const step = promptThenTokens(
          participant,
          chunks,
          (chunk) => sequence.evaluateWithoutGeneratingNewTokens(chunk as Array<Token>),
          (last) => {
            if (last !== undefined) iterator = sequence.evaluateWithMetadata(last as Array<Token>, { probabilities }, options)
            return iterator!.next()
          }
        )
        return async () => {
          const result = await step()
          return result.done === true
            ? undefined
            : { token: result.value.token, probabilities: result.value.probabilities, cells: sequence.nextTokenIndex }
        }
      })

    /** Steps through `DirectSteps`, in the same order and with the same sampler config as `evaluateStepper`. */
    const directStepper = (
      steps: DirectSteps,
      { chunks, options, participant, probabilities, sequence }: Stepping
    ): Effect.Effect<() => Promise<Stepped | undefined>, never, Scope.Scope> =>
      Effect.gen(function*() {
        const sampler = yield* Effect.acquireRelease(
          Effect.sync(() => newNativeSampler(model)),
          // Never while one of its samples runs: a step is uninterruptible until its token is in.
          (sampler) => Effect.sync(() => sampler.dispose())
        )
        // Once: node-llama-cpp applies it again before every token, where the only change, the penalties' window of
        // the tokens so far, is what the sampler's own accepting of each token already keeps (AddonSampler.cpp
        // `acceptToken`), so each later application finds nothing to change.
        sampler.applyConfig(samplerConfigOf(sequence, options))
        const state = sequenceStateOf(sequence)
        const sample = { sampler, probabilities }
        let input: ReadonlyArray<Token> = []
        const step = promptThenTokens(
          participant,
          chunks,
          (chunk) => steps.step({ sequence: state, tokens: chunk }),
          (last) => {
            if (last !== undefined) input = last
            return steps.step({ sequence: state, tokens: input, sample })
          }
        )
        return async () => {
          const sampled = await step()
          if (sampled === undefined) return undefined
          input = [sampled.token]
          return { ...sampled, cells: state.nextTokenIndex }
        }
      })

    const start: BackendShape["start"] = (slot, prompt, sampling) =>
      Effect.gen(function*() {
        const sequence = sequences[slot]!
        const grammar = sampling.grammar === undefined
          ? undefined
          : yield* Effect.mapError(
            grammars.grammarFor(sampling.grammar),
            (error) => new DecodeFailed({ slot, stage: "prefill", message: `grammar: ${error.message}`, cause: error })
          )
        const generated: Array<Token> = []
        const participant = arrivals.claim(slot)
        yield* Effect.addFinalizer(() => Effect.sync(() => participant.leave()))
        const stepping: Stepping = {
          sequence,
          chunks: chunksOf(prompt as ReadonlyArray<Token>, Math.min(prefillChunk, context.batchSize)),
          options: evaluateOptions(model, loaded.banEndOfGeneration, sampling, generated, grammar),
          participant,
          // Probabilities cost a copy of the sampler's candidates per step: asked for only with `logprobs`.
          probabilities: sampling.logprobs !== undefined
        }
        const step = direct === undefined ? yield* evaluateStepper(stepping) : yield* directStepper(direct, stepping)
        let prefilled = false
        const next = Effect.tryPromise({
          try: step,
          catch: (error) =>
            new DecodeFailed({ slot, stage: prefilled ? "decode" : "prefill", message: errorMessage(error), cause: error })
        }).pipe(
          Effect.flatMap((result): Effect.Effect<StepResult, DecodeFailed> => {
            prefilled = true
            if (result === undefined) {
              return new DecodeFailed({ slot, stage: "decode", message: "the sampler produced no token" })
            }
            const { cells, probabilities, token } = result
            if (model.isEogToken(token)) return Effect.succeed({ _tag: "EndOfGeneration", token, cells })
            generated.push(token)
            const logprobs = probabilities === undefined || sampling.logprobs === undefined
              ? undefined
              : stepLogprobs(probabilities, token, sampling.logprobs)
            return Effect.succeed({ _tag: "Token", token, cells, logprobs })
          }),
          Effect.uninterruptible
        )
        return { next } satisfies Generation
      })

    return {
      info,
      ...tokenizer,
      toolCallSyntax: chatRenderer(model).toolCallSyntax,
      checkGrammar: (constraint) => Effect.asVoid(grammars.grammarFor(constraint)),
      detokenize: (tokens, context, options) =>
        model.detokenize(tokens as ReadonlyArray<Token>, options?.special ?? false, context as ReadonlyArray<Token> | undefined),
      start,
      erase: (slot) =>
        Effect.tryPromise({
          try: () => sequences[slot]!.clearHistory(),
          catch: (error) => new KvEraseFailed({ slot, message: errorMessage(error) })
        }),
      trim: (slot, keep) =>
        Effect.acquireUseRelease(
          Effect.sync(() => arrivals.arrive(slot)),
          () =>
            Effect.tryPromise({
              try: () => {
                const sequence = sequences[slot]!
                return sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }])
              },
              catch: (error) => new KvEraseFailed({ slot, message: errorMessage(error) })
            }),
          (participant) => arrivals.expire(slot, participant)
        ),
      copyPrefix: (from, to, length) =>
        Effect.tryPromise({
          try: async () => {
            const target = sequences[to]!
            const copied = sequences[from]!.nextTokenIndex >= length && await copySequencePrefix(target, sequences[from]!, length)
            // A copy that came out short (the source changed meanwhile) leaves nothing half-made behind.
            if (!copied) await target.clearHistory()
            return copied
          },
          catch: (error) => new DecodeFailed({ slot: to, stage: "prefill", message: `KV copy: ${errorMessage(error)}`, cause: error })
        }).pipe(Effect.uninterruptible),
      cells: (slot) => sequences[slot]!.nextTokenIndex,
      tokensOf: (slot) => sequences[slot]!.contextTokens,
      embed: embedder.embed,
      saveSlot: (slot, file) =>
        Effect.tryPromise({
          try: () => sequences[slot]!.saveStateToFile(file),
          catch: (error) => new KvFileFailed({ slot, file, message: errorMessage(error), cause: error })
        }).pipe(Effect.asVoid),
      loadSlot: (slot, file) =>
        Effect.tryPromise({
          try: async () => {
            // Checked against the model and context by `SessionKvFiles` before it gets here.
            await sequences[slot]!.loadStateFromFile(file, { acceptRisk: true })
            return sequences[slot]!.contextTokens
          },
          catch: (error) => new KvFileFailed({ slot, file, message: errorMessage(error), cause: error })
        }),
      // Adapters go on the base model's backend only: one adapter per context.
      adapters: adapter === undefined
        ? {
          check: (spec: AdapterSpec) =>
            Effect.tryPromise({
              try: () => loadLoraOnto(model, spec.path),
              catch: (error) => new AdapterLoadFailed({ path: spec.path, message: errorMessage(error), cause: error })
            }),
          open: (spec: AdapterSpec) =>
            Effect.gen(function*() {
              // An adapter's context costs what the base model's does, plus the adapter's weights; held while it is open.
              const memory = yield* Effect.serviceOption(MemoryManager)
              if (Option.isSome(memory) && loaded.contextBytes !== undefined) {
                const adapterBytes = yield* Effect.sync(() => fs.statSync(spec.path, { throwIfNoEntry: false })?.size ?? 0)
                yield* memory.value.reserve({
                  label: `adapter context ${loaded.id} ${basename(spec.path)}`,
                  model: loaded.id,
                  parts: { context: loaded.contextBytes, adapter: adapterBytes }
                }).pipe(Effect.mapError((refused) => new AdapterLoadFailed({ path: spec.path, message: refused.message, cause: refused })))
              }
              return yield* Effect.mapError(
                contextBackend(loaded, spec),
                (error) => new AdapterLoadFailed({ path: spec.path, message: error.message, cause: error.cause })
              )
            })
        }
        : undefined
    } satisfies BackendShape
  })

/**
 * `Backend` on node-llama-cpp: one model, one context with `parallel` sequences, driven token by token. Adapters
 * (`adapters.open`) get contexts of their own on the same loaded weights.
 */
export const LlamaBackend = {
  layer: (config: LlamaBackendConfig): Layer.Layer<Backend, ModelLoadFailed | ModelDoesNotFit> =>
    Layer.scoped(
      Backend,
      Effect.gen(function*() {
        const threads = config.threads ?? availableParallelism()
        const loadFailed = (error: unknown) =>
          new ModelLoadFailed({ path: config.modelPath, message: errorMessage(error), cause: error })
        const { binary, llama } = yield* Effect.acquireRelease(
          loadLlamaBinary(config.binary ?? "auto", { gpu: config.gpu ?? "auto", maxThreads: threads, openMpWait: config.openMpWait }).pipe(Effect.mapError(loadFailed)),
          ({ llama }) => Effect.promise(() => llama.dispose())
        )
        const modelId = config.modelId ?? basename(config.modelPath).replace(/\.gguf$/i, "")
        const batchSize = config.batchSize ?? Math.min(512, config.contextSize * config.parallel)
        const flashAttention = config.flashAttention ?? true
        // Without a memory manager (a backend built alone, as some tests do) nothing is accounted.
        const memory = yield* Effect.serviceOption(MemoryManager)
        let contextBytes: number | undefined
        if (Option.isSome(memory)) {
          const estimate = yield* Effect.tryPromise({
            try: () =>
              estimateLlamaMemory(llama, config.modelPath, { contextSize: config.contextSize, sequences: config.parallel, batchSize, flashAttention }),
            catch: loadFailed
          })
          contextBytes = estimate.contextBytes
          // Held while the model is: released with the engine's scope, after the model and context are disposed.
          yield* memory.value.reserve({
            label: `model ${modelId}`,
            model: modelId,
            parts: { weights: estimate.weightsBytes, context: estimate.contextBytes }
          }).pipe(
            Effect.mapError((refused) =>
              new ModelDoesNotFit({
                model: modelId,
                path: config.modelPath,
                weightsBytes: estimate.weightsBytes,
                contextBytes: estimate.contextBytes,
                contextSize: config.contextSize,
                parallel: config.parallel,
                committedBytes: refused.committedBytes,
                limitBytes: refused.limitBytes,
                others: refused.committed.flatMap((held) => (held.model === undefined ? [] : [{ model: held.model, bytes: held.bytes }])),
                unquantized: estimate.unquantized,
                onGpu: estimate.onGpu
              })
            )
          )
        }
        // node-llama-cpp maps only where the system can; it reads the file otherwise.
        const weightsMapped = mapsWeights(config.mmap ?? "auto", binary) && llama.supportsMmap
        const model = yield* Effect.acquireRelease(
          Effect.tryPromise({ try: () => llama.loadModel({ modelPath: config.modelPath, useMmap: weightsMapped }), catch: loadFailed }),
          (model) => Effect.promise(() => model.dispose())
        )
        const id = modelId
        const embedder = yield* makeLlamaEmbedder(model, { contextSize: config.contextSize, threads })
        const tokenizer = yield* makeBoundedTokenizer(model, {
          modelPath: config.modelPath,
          // Built before any context, so the context size as node-llama-cpp pads it (to a multiple of 256), less the
          // one cell of each sequence that stays free (see `llamaModelInfo`): a bound never stricter than the context.
          contextSize: Math.ceil(config.contextSize / 256) * 256 - 1,
          vocabSize: llamaVocabSize(model),
          binary: binary.kind
        }).pipe(Effect.mapError((error) => new ModelLoadFailed({ path: config.modelPath, message: error.message, cause: error })))
        return yield* contextBackend({
          model,
          config,
          threads,
          prefillChunk: Math.max(1, config.prefillChunk ?? defaultPrefillChunk),
          embedder,
          tokenizer,
          grammars: new GrammarCache(llama, id, config.grammarCache),
          banEndOfGeneration: endOfGenerationBan(model, llamaVocabSize(model)),
          id,
          binary: { ...binary, weights: weightsMapped ? "mmap" : "memory" },
          contextBytes
        }, undefined)
      })
    )
}
