import { Chunk, Effect, Layer, Stream } from "effect"
import type { Backend } from "../../src/engine/Backend.js"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import { PrefixCacheConfig, SeqPool } from "../../src/engine/SeqPool.js"
import type { PrefixCacheSettings } from "../../src/engine/SeqPool.js"
import { SimBackend } from "../../src/engine/SimBackend.js"
import type { SimBackendConfig } from "../../src/engine/SimBackend.js"
import type { GenerationEvent, GenerationRequest } from "../../src/scheduler/GenerationRequest.js"
import { RequestScheduler } from "../../src/scheduler/RequestScheduler.js"
import { SchedulerConfig } from "../../src/scheduler/SchedulerConfig.js"
import type { SchedulerSettings } from "../../src/scheduler/SchedulerConfig.js"

/** What an engine under test is configured with; shutdown grace is 0 unless `scheduler` says otherwise. */
export interface EngineOptions {
  readonly scheduler?: Partial<SchedulerSettings>
  readonly cache?: Partial<PrefixCacheSettings>
}

/** `RequestScheduler` and `SeqPool` over `backend`; the pool and the backend are provided to the test too. */
export const engineOn = <E, R>(backend: Layer.Layer<Backend, E, R>, options: EngineOptions = {}) =>
  RequestScheduler.Default.pipe(
    Layer.provideMerge(SeqPool.Default),
    Layer.provide(PrefixCacheConfig.layer(options.cache)),
    Layer.provide(SchedulerConfig.layer({ shutdownGraceMs: 0, ...options.scheduler })),
    Layer.provideMerge(backend)
  )

/** An engine on `SimBackend`: one slot, 64 cells and 10 ms per step unless `sim` says otherwise. */
export const simEngine = (sim: Partial<SimBackendConfig> = {}, options: EngineOptions = {}) =>
  engineOn(SimBackend.layer({ parallel: 1, contextSize: 64, tokenLatency: 10, ...sim }), options)

/** A three-token prompt with a fixed seed and 5 tokens at most, unless `overrides` says otherwise. */
export const simRequest = (id: string, overrides: Partial<GenerationRequest> = {}): GenerationRequest => ({
  id,
  prompt: [1, 2, 3],
  sampling: { ...defaultSampling, seed: 7 },
  maxTokens: 5,
  ...overrides
})

/** Every event of a submission, or its admission error. */
export const collect = (stream: Stream.Stream<GenerationEvent, unknown>) =>
  stream.pipe(Stream.runCollect, Effect.map(Chunk.toReadonlyArray), Effect.either)

/** The `Finished` event a stream must end with. */
export const finishedOf = (events: ReadonlyArray<GenerationEvent>) => {
  const last = events[events.length - 1]
  if (last?._tag !== "Finished") throw new Error("stream did not end with Finished")
  return last
}
