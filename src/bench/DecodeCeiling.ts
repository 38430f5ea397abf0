import { Effect } from "effect"
import type { Scope } from "effect"
import type { LlamaContext } from "node-llama-cpp"
import { loadBenchModel } from "./BenchModel.js"
import type { EngineBenchConfig } from "./InProcessTarget.js"

/** What `llama_decode` alone sustains at one level: the most any server on this binary and machine could stream. */
export interface CeilingResult {
  readonly concurrency: number
  readonly round: number
  /** Tokens decoded per second: one per sequence per step, logits computed, nothing sampled. */
  readonly tokensPerSecond: number
  readonly msPerStep: number
}

/** node-llama-cpp internal: LlamaContext#_ctx, the native AddonContext its dispatch loop drives (see LlamaBackend). */
interface NativeContext {
  initBatch(size: number): void
  addToBatch(sequenceId: number, firstPosition: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array
  decodeBatch(): Promise<void>
}

const promptTokens = 16

/** Measures the ceiling at one level; the model stays loaded between levels and rounds. */
export type MeasureCeiling = (
  concurrency: number,
  seconds: number,
  round: number
) => Effect.Effect<CeilingResult, Error>

/**
 * Loads the model once and returns the measurement: decode steps of `concurrency` sequences, one token each, issued
 * straight to the native context for `seconds`: the same binary, model, threads and context shape as the Weft modes,
 * without sampling, JS between steps or anything else. Every mode's tok/s is read against this.
 */
export const makeDecodeCeiling = (config: EngineBenchConfig): Effect.Effect<MeasureCeiling, Error, Scope.Scope> =>
  Effect.map(
    loadBenchModel({ modelPath: config.modelPath, gpu: config.gpu, maxThreads: config.threads }),
    ({ model }) => (concurrency, seconds, round) =>
      Effect.scoped(Effect.gen(function*() {
        const context: LlamaContext = yield* Effect.acquireRelease(
          Effect.tryPromise(() =>
            model.createContext({
              // Weft's shape: `parallel` sequences, of which `concurrency` decode.
              sequences: Math.max(config.parallel, concurrency),
              contextSize: config.contextSize,
              threads: config.threads,
              batchSize: config.batchSize ?? Math.min(512, config.contextSize * config.parallel),
              flashAttention: config.flashAttention
            })
          ),
          (context) => Effect.promise(() => context.dispose())
        )
        return yield* Effect.tryPromise(() => decodeSteps(context, config.contextSize, concurrency, seconds, round))
      }))
  )

const decodeSteps = async (
  context: LlamaContext,
  contextSize: number,
  concurrency: number,
  seconds: number,
  round: number
): Promise<CeilingResult> => {
  for (let sequence = 0; sequence < concurrency; sequence++) context.getSequence()
  const native = (context as unknown as { _ctx: NativeContext })._ctx
  const token = (step: number) => 300 + (step % 1000)
  native.initBatch(promptTokens * concurrency)
  for (let sequence = 0; sequence < concurrency; sequence++) {
    const prompt = Uint32Array.from({ length: promptTokens }, (_, index) => token(index + sequence))
    native.addToBatch(sequence, 0, prompt, Uint32Array.from([promptTokens - 1]))
  }
  await native.decodeBatch()
  let position = promptTokens
  let steps = 0
  const started = performance.now()
  const deadline = started + seconds * 1000
  // Bounded by the context: positions past it would fail.
  while (performance.now() < deadline && position < contextSize - 1) {
    native.initBatch(concurrency)
    for (let sequence = 0; sequence < concurrency; sequence++) {
      native.addToBatch(sequence, position, Uint32Array.from([token(position + sequence)]), Uint32Array.from([0]))
    }
    await native.decodeBatch()
    position += 1
    steps += 1
  }
  const elapsed = performance.now() - started
  return { concurrency, round, tokensPerSecond: (steps * concurrency * 1000) / elapsed, msPerStep: elapsed / steps }
}
