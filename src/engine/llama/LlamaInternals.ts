/**
 * Every reach into node-llama-cpp's internals (3.22.1), in one place: each cast names the internal it touches and the
 * node-llama-cpp source that shows its shape. Nothing else in Weft casts a node-llama-cpp object.
 */
import { withLock } from "lifecycle-utils"
import { TokenBias } from "node-llama-cpp"
import type { LlamaContext, LlamaContextSequence, LlamaModel, SequenceEvaluateOptions, Token } from "node-llama-cpp"

/**
 * The native AddonContext behind a LlamaContext, as far as Weft drives it: node-llama-cpp's dispatch loop
 * (LlamaContext.js `dispatchPendingBatch` → `decodeTokenBatchItems`) calls `initBatch(tokens)`, `addToBatch(...)` per
 * item, `setThreads(allocation)` and then `decodeBatch()`.
 */
export interface NativeContext {
  initBatch(size: number): void
  addToBatch(sequenceId: number, firstPosition: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array
  setThreads(threads: number): void
  decodeBatch(): Promise<void>
  /**
   * Samples the logits at `batchLogitIndex` of the last decode with `sampler` and accepts the token into the sampler
   * (its grammar and penalties). A token, or -1; `[token, probabilities]` when asked for probabilities, the
   * probabilities as a flat `[token, probability, ...]` array (AddonContext.cpp `AddonContextSampleTokenWorker`).
   */
  sampleToken(batchLogitIndex: number, sampler: NativeSampler): Promise<number>
  sampleToken(batchLogitIndex: number, sampler: NativeSampler, probabilities: boolean): Promise<number | [number, Array<number>?]>
  /**
   * `decodeBatch` and `sampleToken` done on the calling thread, returning (or throwing) once done; `sampleTokenSync`'s
   * promise is already settled. Only in Weft's native build
   * (`native/node-llama-cpp/0002-synchronous-decode-and-sample.patch`).
   */
  decodeBatchSync?(): void
  sampleTokenSync?(batchLogitIndex: number, sampler: NativeSampler): Promise<number>
  sampleTokenSync?(batchLogitIndex: number, sampler: NativeSampler, probabilities: boolean): Promise<number | [number, Array<number>?]>
}

/** node-llama-cpp's native AddonSampler: one generation's sampler chain (AddonSampler.cpp). */
export interface NativeSampler {
  /** Rebuilds only what changed since the last config (AddonSampler.cpp `ApplyConfig`). */
  applyConfig(config: NativeSamplerConfig): void
  dispose(): void
}

/** The addon's sampler config, as node-llama-cpp resolves it from a sequence's evaluate options. */
export type NativeSamplerConfig = Record<string, unknown>

/**
 * A new native sampler for `model`. node-llama-cpp internal: LlamaModel#_llama._bindings.AddonSampler and
 * LlamaModel#_model, what its own LlamaSampler constructs (dist/evaluator/LlamaContext/LlamaSampler.js).
 */
export const newNativeSampler = (model: LlamaModel): NativeSampler => {
  const internals = model as unknown as {
    _llama: { _bindings: { AddonSampler: new(model: unknown) => NativeSampler } }
    _model: unknown
  }
  return new internals._llama._bindings.AddonSampler(internals._model)
}

/**
 * The native sampler config node-llama-cpp would apply for `options` on `sequence`, for every token it samples.
 * node-llama-cpp internal: LlamaContextSequence#_resolveSamplerConfig (LlamaContext.js).
 */
export const samplerConfigOf = (sequence: LlamaContextSequence, options: SequenceEvaluateOptions): NativeSamplerConfig =>
  // node-llama-cpp internal: LlamaContextSequence#_resolveSamplerConfig.
  (sequence as unknown as { _resolveSamplerConfig(options: SequenceEvaluateOptions): NativeSamplerConfig })._resolveSamplerConfig(options)

/** What a decode issued outside node-llama-cpp's evaluation must read and update of a sequence. */
export interface SequenceState {
  readonly sequenceId: number
  /** The KV position the next token goes to. */
  readonly nextTokenIndex: number
  /** Records `tokens` as decoded after the sequence's current tokens. */
  readonly advance: (tokens: ReadonlyArray<Token>) => void
}

/**
 * `sequence`'s id and token bookkeeping. node-llama-cpp internal: LlamaContextSequence#_sequenceId, #_nextTokenIndex
 * and #_contextTokens, which its own `_decodeTokens` advances after each decode (LlamaContext.js); the
 * `contextTokens` getter hands out copies, so the array is the sequence's own.
 */
export const sequenceStateOf = (sequence: LlamaContextSequence): SequenceState => {
  const internals = sequence as unknown as { _sequenceId: number; _nextTokenIndex: number; _contextTokens: Array<Token> }
  return {
    sequenceId: internals._sequenceId,
    get nextTokenIndex() {
      return internals._nextTokenIndex
    },
    advance: (tokens) => {
      internals._nextTokenIndex += tokens.length
      for (const token of tokens) internals._contextTokens.push(token)
    }
  }
}

/**
 * Runs `use` holding `context`'s lock: the one node-llama-cpp's batch dispatch and its KV edits (erase, copy, state
 * load) take, so a decode issued outside it never interleaves with them. node-llama-cpp internal: the lock
 * `withLock([context, "context"])` of lifecycle-utils, the same module instance node-llama-cpp imports.
 */
export const withContextLock = <A>(context: LlamaContext, use: () => Promise<A>): Promise<A> =>
  withLock([context, "context"], use)

/** The native context `context` decodes with. node-llama-cpp internal: LlamaContext#_ctx (AddonContext). */
export const nativeContextOf = (context: LlamaContext): NativeContext =>
  // node-llama-cpp internal: LlamaContext#_ctx.
  (context as unknown as { _ctx: NativeContext })._ctx

/**
 * The decodes `context` has queued and not yet dispatched. node-llama-cpp internal: LlamaContext#_queuedDecodes,
 * entries `{ sequenceId, tokens, ... }`; the batch items a prioritization strategy gets carry the very `tokens` array
 * of their entry (LlamaContext.js `dispatchPendingBatch` → `getOrderedQueuedDecodes`).
 */
export const queuedDecodesOf = (
  context: LlamaContext
): ReadonlyArray<{ readonly sequenceId: number; readonly tokens: ReadonlyArray<Token> }> =>
  // node-llama-cpp internal: LlamaContext#_queuedDecodes.
  (context as unknown as {
    _queuedDecodes?: ReadonlyArray<{ readonly sequenceId: number; readonly tokens: ReadonlyArray<Token> }>
  })._queuedDecodes ?? []

/** What `interceptDecodes` asks before each decode step and tells after it. */
export interface DecodeThreads {
  /** Threads for a step of `tokens` tokens. */
  readonly choose: (tokens: number) => number
  /** A step of `tokens` tokens on `threads` threads took `milliseconds`. */
  readonly record: (tokens: number, threads: number, milliseconds: number) => void
}

/**
 * Routes every decode step of `context` through `threads`: the thread count is set right before the native
 * `decodeBatch` (or `decodeBatchSync`) and the step is timed. node-llama-cpp internal: LlamaContext#_ctx (AddonContext)
 * is replaced by a proxy, because the native object's methods are read-only and cannot be overridden on it.
 */
export const interceptDecodes = (context: LlamaContext, threads: DecodeThreads): void => {
  const native = nativeContextOf(context) as NativeContext & Record<PropertyKey, unknown>
  let tokens = 0
  const bound = new Map<PropertyKey, unknown>()
  const initBatch = (size: number) => {
    tokens = size
    return native.initBatch(size)
  }
  /** Sets the step's threads and hands back what records its time once it is done. */
  const start = () => {
    const chosen = threads.choose(tokens)
    native.setThreads(chosen)
    const started = performance.now()
    const measured = tokens
    return () => threads.record(measured, chosen, performance.now() - started)
  }
  const decodeBatch = () => {
    const done = start()
    return native.decodeBatch().then((result) => {
      done()
      return result
    })
  }
  // Only where the binary has it (Weft's native build): without, the proxy has none either.
  const decodeBatchSync = native.decodeBatchSync === undefined ? undefined : () => {
    const done = start()
    native.decodeBatchSync!()
    done()
  }
  const proxy = new Proxy(native, {
    get: (target, key) => {
      if (key === "initBatch") return initBatch
      if (key === "decodeBatch") return decodeBatch
      if (key === "decodeBatchSync") return decodeBatchSync
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
  // node-llama-cpp internal: LlamaContext#_ctx, read by its dispatch loop on every step.
  ;(context as unknown as { _ctx: NativeContext })._ctx = proxy
}

/**
 * A token bias that bans every end-of-generation token among the first `vocabSize` (for `ignore_eos`).
 * `TokenBias.set` skips end-of-generation tokens on purpose (node-llama-cpp dist/evaluator/TokenBias.js:41-48), so
 * the ban goes into node-llama-cpp internal TokenBias#_biases, the map the sampler reads as llama.cpp logit biases.
 */
export const endOfGenerationBan = (model: LlamaModel, vocabSize: number): TokenBias => {
  const ban = new TokenBias(model.tokenizer)
  // node-llama-cpp internal: TokenBias#_biases.
  const biases = (ban as unknown as { _biases: Map<Token, number> })._biases
  for (let token = 0; token < vocabSize; token++) {
    if (model.isEogToken(token as Token)) biases.set(token as Token, -Infinity)
  }
  return ban
}

/**
 * Makes `target` hold the first `length` cells of `source` (llama.cpp's `llama_memory_seq_cp`, which shares the cells
 * rather than recomputing them), and tells whether it does. node-llama-cpp internal:
 * LlamaContextSequence#_copyStateFromOtherSequence(otherSequence, upToTokenIndex) (LlamaContext.js), which takes the
 * context lock, replaces `target`'s cells and token list with `source`'s, then erases them from `length` on.
 */
export const copySequencePrefix = (target: LlamaContextSequence, source: LlamaContextSequence, length: number): Promise<boolean> =>
  // node-llama-cpp internal: LlamaContextSequence#_copyStateFromOtherSequence.
  (target as unknown as {
    _copyStateFromOtherSequence(other: LlamaContextSequence, upToTokenIndex: number): Promise<boolean>
  })._copyStateFromOtherSequence(source, length)

/**
 * Loads the LoRA adapter at `filePath` onto `model`, as creating a context with it would, so a file that does not fit
 * the model is refused before any context needs it. node-llama-cpp internal: LlamaModel#_getOrLoadLora (LlamaModel.js),
 * which keeps each adapter file loaded once per model until the model is disposed.
 */
export const loadLoraOnto = async (model: LlamaModel, filePath: string): Promise<void> => {
  // node-llama-cpp internal: LlamaModel#_getOrLoadLora.
  await (model as unknown as { _getOrLoadLora(filePath: string): Promise<unknown> })._getOrLoadLora(filePath)
}
