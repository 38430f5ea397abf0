/**
 * Every reach into node-llama-cpp's internals (3.22.1), in one place: each cast names the internal it touches and the
 * node-llama-cpp source that shows its shape. Nothing else in Weft casts a node-llama-cpp object.
 */
import { TokenBias } from "node-llama-cpp"
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp"

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
}

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
 * `decodeBatch` and the step is timed. node-llama-cpp internal: LlamaContext#_ctx (AddonContext) is replaced by a
 * proxy, because the native object's methods are read-only and cannot be overridden on it.
 */
export const interceptDecodes = (context: LlamaContext, threads: DecodeThreads): void => {
  const native = nativeContextOf(context) as NativeContext & Record<PropertyKey, unknown>
  let tokens = 0
  const bound = new Map<PropertyKey, unknown>()
  const initBatch = (size: number) => {
    tokens = size
    return native.initBatch(size)
  }
  const decodeBatch = () => {
    const chosen = threads.choose(tokens)
    native.setThreads(chosen)
    const started = performance.now()
    const measured = tokens
    return native.decodeBatch().then((result) => {
      threads.record(measured, chosen, performance.now() - started)
      return result
    })
  }
  const proxy = new Proxy(native, {
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
