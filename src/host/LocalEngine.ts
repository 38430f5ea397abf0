import { Effect, Layer } from "effect"
import type { WeftSettings } from "../config/WeftConfig.js"
import type { Backend, BackendShape } from "../engine/Backend.js"
import { LlamaBackend } from "../engine/llama/LlamaBackend.js"
import type { LlamaBackendConfig, ModelLoadFailed } from "../engine/llama/LlamaBackend.js"
import { PrefixCacheConfig, SeqPool } from "../engine/SeqPool.js"
import type { PrefixCacheSettings } from "../engine/SeqPool.js"
import { ensureModel } from "../model/generateModel.js"
import type { ModelWriteFailed } from "../model/generateModel.js"
import type { ModelDoesNotFit } from "../memory/ModelDoesNotFit.js"
import { MemoryManager } from "../memory/MemoryManager.js"
import type { MemoryManagerShape } from "../memory/MemoryManager.js"
import { RequestLog, RequestLogConfig } from "../observability/RequestLog.js"
import type { RequestLogSettings } from "../observability/RequestLog.js"
import { SchedulerMetrics } from "../observability/SchedulerMetrics.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import { SchedulerConfig } from "../scheduler/SchedulerConfig.js"
import type { SchedulerSettings } from "../scheduler/SchedulerConfig.js"

/** Why a local engine could not start. */
export type EngineStartFailed = ModelLoadFailed | ModelWriteFailed | ModelDoesNotFit

/** One loaded model: the backend for tokenizing, the scheduler for generating, the metrics observing them. */
export interface Engine {
  readonly backend: BackendShape
  readonly scheduler: RequestScheduler
  readonly metrics: SchedulerMetrics
}

/** What the registry builds into an `Engine`: the services of one model, with their own scope. */
export type EngineLayer = Layer.Layer<RequestScheduler | Backend | SchedulerMetrics, EngineStartFailed>

/** The scheduler stack over any backend: SeqPool and RequestScheduler, with the backend still visible for tokenizing. */
export const schedulerLayer = <E>(
  backend: Layer.Layer<Backend, E>,
  scheduler: Partial<SchedulerSettings> = {},
  cache: Partial<PrefixCacheSettings> = {}
): Layer.Layer<RequestScheduler | SeqPool | Backend, E> =>
  RequestScheduler.Default.pipe(
    Layer.provideMerge(SeqPool.Default),
    Layer.provide(SchedulerConfig.layer(scheduler)),
    Layer.provide(PrefixCacheConfig.layer(cache)),
    Layer.provideMerge(backend)
  )

/** An engine whose lifecycle events feed the metrics and the per-request log lines. */
export const observedEngineLayer = <E>(
  engine: Layer.Layer<RequestScheduler | Backend, E>,
  requestLog: Partial<RequestLogSettings> = {}
): Layer.Layer<RequestScheduler | Backend | SchedulerMetrics, E> =>
  Layer.merge(SchedulerMetrics.Default, RequestLog.Default).pipe(
    Layer.provide(RequestLogConfig.layer(requestLog)),
    Layer.provideMerge(engine)
  )

/**
 * An engine whose memory is accounted in `memory`: its backend reserves what it commits there before loading, and its
 * cached prefixes are the first thing freed under memory pressure.
 */
export const accountedEngineLayer = <E>(
  engine: Layer.Layer<RequestScheduler | Backend | SchedulerMetrics, E>,
  memory: MemoryManagerShape
): Layer.Layer<RequestScheduler | Backend | SchedulerMetrics, E> =>
  Layer.scopedDiscard(
    Effect.flatMap(RequestScheduler, (scheduler) => memory.onPressure(`model ${scheduler.modelInfo.id}`, scheduler.evictCachedPrefixes))
  ).pipe(Layer.provideMerge(engine), Layer.provide(Layer.succeed(MemoryManager, memory)))

/** node-llama-cpp as the engine. */
export const llamaBackendLayer = (config: LlamaBackendConfig): Layer.Layer<Backend, ModelLoadFailed | ModelDoesNotFit> => LlamaBackend.layer(config)

/** The model `weft serve` loads: the configured GGUF, or the demo model, generated into the data dir once. */
export const modelPathOf = (settings: WeftSettings) =>
  settings.model === undefined ? ensureModel("demo", settings.dataDir) : Effect.succeed(settings.model)

/** node-llama-cpp behind the scheduler, as configured. */
export const llamaEngineLayer = (settings: WeftSettings) =>
  schedulerLayer(
    Layer.unwrapEffect(
      Effect.map(modelPathOf(settings), (modelPath) =>
        llamaBackendLayer({
          modelPath,
          modelId: settings.modelId,
          parallel: settings.parallel,
          contextSize: settings.ctxSize,
          batchSize: settings.batchSize,
          threads: settings.threads,
          prefillChunk: settings.prefillChunk,
          flashAttention: settings.flashAttention,
          gpu: settings.gpu,
          binary: settings.binary,
          directSteps: settings.decodePath !== "evaluate",
          synchronousSteps: settings.decodePath === "direct",
          mmap: settings.mmap,
          openMpWait: settings.openMpWait
        }))
    ),
    {
      maxQueue: settings.maxQueue,
      timeouts: { queueMs: settings.timeoutQueueMs, firstTokenMs: settings.timeoutFirstTokenMs, totalMs: settings.timeoutTotalMs },
      shutdownGraceMs: settings.shutdownGraceMs
    },
    { maxCachedTokens: settings.cacheMaxTokens, maxCachedBytes: settings.cacheMaxBytes }
  )
