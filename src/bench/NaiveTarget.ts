import { Effect } from "effect"
import type { Scope } from "effect"
import type { LlamaContext, LlamaContextSequence } from "node-llama-cpp"
import { endOfGenerationBan } from "../engine/llama/LlamaInternals.js"
import { loadBenchModel } from "./BenchModel.js"
import type { BenchTarget, GenerationCall } from "./BenchTarget.js"
import { sampleOrFailure } from "./BenchTarget.js"

/** How the naive mode loads the model: only what every mode shares. */
export interface NaiveTargetConfig {
  readonly modelPath: string
  readonly threads: number
  readonly gpu: "auto" | false
}

/**
 * node-llama-cpp used the straightforward way, as a first program would: one context with a sequence per stream, one
 * `sequence.evaluate` loop per stream, `threads` set to the cores, every other option (context size, batch size,
 * batching, flash attention) left at its default. The sampling parameters and the ignore_eos ban are the server's, so
 * the modes differ only in how they drive the engine.
 */
export const naiveTarget = (config: NaiveTargetConfig): Effect.Effect<BenchTarget, Error, Scope.Scope> =>
  Effect.gen(function*() {
    const { model } = yield* loadBenchModel({ modelPath: config.modelPath, gpu: config.gpu })
    // The same ban of end-of-generation tokens as LlamaBackend's for ignore_eos.
    const banEndOfGeneration = endOfGenerationBan(model, model.fileInfo.metadata.tokenizer.ggml.tokens.length)

    let context: LlamaContext | undefined
    let idle: Array<LlamaContextSequence> = []
    yield* Effect.addFinalizer(() => Effect.promise(async () => context?.dispose()))

    const prepare = (concurrency: number) =>
      Effect.promise(async () => {
        if (context !== undefined && context.totalSequences === concurrency) return
        await context?.dispose()
        context = await model.createContext({ sequences: concurrency, threads: config.threads })
        idle = Array.from({ length: concurrency }, () => context!.getSequence())
      })

    const generate = (call: GenerationCall) =>
      Effect.acquireUseRelease(
        Effect.sync(() => {
          const sequence = idle.pop()
          if (sequence === undefined) throw new Error("naive: more streams than prepared sequences")
          return sequence
        }),
        (sequence) =>
          Effect.tryPromise(async () => {
            const startedAt = performance.now()
            const text = model.tokenize(call.prompt, true)
            const bos = model.tokens.bos
            const prompt = bos === null || !model.tokens.shouldPrependBosToken || text[0] === bos ? text : [bos, ...text]
            const chunkTimes: Array<number> = []
            const options = {
              temperature: call.temperature,
              topK: 40,
              topP: 0.95,
              minP: 0.05,
              seed: call.seed,
              tokenBias: banEndOfGeneration
            }
            for await (const _token of sequence.evaluate(prompt, options)) {
              const at = performance.now()
              chunkTimes.push(at)
              call.onChunk?.(at)
              if (chunkTimes.length >= call.maxTokens) break
            }
            return {
              ok: true,
              startedAt,
              endedAt: performance.now(),
              chunkTimes,
              completionTokens: chunkTimes.length,
              promptTokens: prompt.length
            }
          }),
        (sequence) =>
          Effect.promise(async () => {
            await sequence.clearHistory()
            idle.push(sequence)
          })
      )

    return {
      name: "naive",
      pids: [],
      prepare,
      send: (call) => sampleOrFailure(generate(call))
    } satisfies BenchTarget
  })
