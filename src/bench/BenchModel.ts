import { Effect } from "effect"
import type { Scope } from "effect"
import { getLlama, LlamaLogLevel } from "node-llama-cpp"
import type { Llama, LlamaModel } from "node-llama-cpp"

/**
 * node-llama-cpp and a model loaded for the bench's own engines (naive, ceiling), released with the scope. Nothing is
 * set beyond what is given: the naive mode relies on every other option keeping node-llama-cpp's default.
 */
export const loadBenchModel = (config: {
  readonly modelPath: string
  readonly gpu: "auto" | false
  readonly maxThreads?: number | undefined
}): Effect.Effect<{ readonly llama: Llama; readonly model: LlamaModel }, Error, Scope.Scope> =>
  Effect.gen(function*() {
    const llama = yield* Effect.acquireRelease(
      Effect.tryPromise(() =>
        getLlama({
          build: "never",
          gpu: config.gpu,
          logLevel: LlamaLogLevel.error,
          ...(config.maxThreads === undefined ? {} : { maxThreads: config.maxThreads })
        })
      ),
      (llama) => Effect.promise(() => llama.dispose())
    )
    const model = yield* Effect.acquireRelease(
      Effect.tryPromise(() => llama.loadModel({ modelPath: config.modelPath })),
      (model) => Effect.promise(() => model.dispose())
    )
    return { llama, model }
  })
