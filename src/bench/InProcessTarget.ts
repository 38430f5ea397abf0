import { Effect, Layer, Stream } from "effect"
import type { Scope } from "effect"
import { Backend } from "../engine/Backend.js"
import type { ModelLoadFailed } from "../engine/llama/LlamaBackend.js"
import type { ModelDoesNotFit } from "../memory/ModelDoesNotFit.js"
import { defaultSampling } from "../engine/SamplingOptions.js"
import { llamaBackendLayer, schedulerLayer } from "../host/LocalEngine.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import type { BenchTarget, GenerationCall } from "./BenchTarget.js"
import { sampleOrFailure } from "./BenchTarget.js"

/** The engine `weft serve` runs, as the bench configures it. */
export interface EngineBenchConfig {
  readonly modelPath: string
  readonly parallel: number
  readonly contextSize: number
  readonly threads: number
  readonly batchSize?: number | undefined
  readonly flashAttention: boolean
  readonly gpu: "auto" | false
}

/**
 * The scheduler stack of `weft serve` (LlamaBackend → SeqPool → RequestScheduler) without HTTP, in this process:
 * the same requests as over HTTP, submitted directly, so the difference to the HTTP mode is the HTTP layer's cost.
 */
export const inProcessTarget = (config: EngineBenchConfig): Effect.Effect<BenchTarget, ModelLoadFailed | ModelDoesNotFit, Scope.Scope> =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      schedulerLayer(
        llamaBackendLayer({
          modelPath: config.modelPath,
          parallel: config.parallel,
          contextSize: config.contextSize,
          threads: config.threads,
          batchSize: config.batchSize,
          flashAttention: config.flashAttention,
          gpu: config.gpu
        }),
        { maxQueue: 1024, shutdownGraceMs: 0 }
      )
    )
    const backend = yield* Effect.provide(Backend, context)
    const scheduler = yield* Effect.provide(RequestScheduler, context)

    const generate = (call: GenerationCall) =>
      Effect.gen(function*() {
        const startedAt = performance.now()
        const text = yield* backend.tokenize(call.prompt, { special: true })
        const bos = backend.info.bosToken
        // As the HTTP server maps a completion prompt (OpenAiMapping.completionPrompts).
        const prompt = bos === undefined || !backend.info.addBosToken || text[0] === bos ? text : [bos, ...text]
        const chunkTimes: Array<number> = []
        let completionTokens = 0
        let error: string | undefined
        yield* scheduler.submit({
          id: `bench-${call.index}-${call.seed}`,
          prompt,
          sampling: { ...defaultSampling, temperature: call.temperature, seed: call.seed, ignoreEos: true },
          maxTokens: call.maxTokens
        }).pipe(
          Stream.runForEach((event) =>
            Effect.sync(() => {
              if (event._tag === "Delta" && event.text.length > 0) {
                const at = performance.now()
                chunkTimes.push(at)
                call.onChunk?.(at)
              } else if (event._tag === "Finished") {
                completionTokens = event.usage.completionTokens
                if (event.error !== undefined) error = event.error.message
              }
            })
          )
        )
        return {
          ok: error === undefined,
          error,
          startedAt,
          endedAt: performance.now(),
          chunkTimes,
          completionTokens,
          promptTokens: prompt.length
        }
      })

    return {
      name: "in-process",
      pids: [],
      prepare: () => Effect.void,
      send: (call) => sampleOrFailure(generate(call))
    } satisfies BenchTarget
  })
