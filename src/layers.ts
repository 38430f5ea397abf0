import * as fs from "node:fs"
import * as path from "node:path"
import type { HttpServer } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { Effect, Layer, Logger, LogLevel } from "effect"
import { WeftConfig } from "./config/WeftConfig.js"
import type { WeftSettings } from "./config/WeftConfig.js"
import type { Backend } from "./engine/Backend.js"
import { LlamaBackend } from "./engine/llama/LlamaBackend.js"
import type { LlamaBackendConfig, ModelLoadFailed } from "./engine/llama/LlamaBackend.js"
import { PrefixCacheConfig, SeqPool } from "./engine/SeqPool.js"
import type { PrefixCacheSettings } from "./engine/SeqPool.js"
import { ModelHost } from "./http/ModelHost.js"
import type { EngineStartFailed } from "./http/ModelHost.js"
import { WeftHttpServer } from "./http/WeftHttpServer.js"
import type { HttpServerOptions } from "./http/WeftHttpServer.js"
import { ensureModel } from "./model/generateModel.js"
import { JsonLogger } from "./observability/JsonLogger.js"
import { OtlpTracing } from "./observability/OtlpTracing.js"
import { ProcessMetrics } from "./observability/ProcessMetrics.js"
import { RequestLog, RequestLogConfig } from "./observability/RequestLog.js"
import type { RequestLogSettings } from "./observability/RequestLog.js"
import { SchedulerMetrics } from "./observability/SchedulerMetrics.js"
import { RequestScheduler } from "./scheduler/RequestScheduler.js"
import { SchedulerConfig } from "./scheduler/SchedulerConfig.js"
import { SessionStore } from "./sessions/SessionStore.js"
import type { SchedulerSettings } from "./scheduler/SchedulerConfig.js"

/** The scheduler stack over any backend: SeqPool and RequestScheduler, with the backend still visible for tokenizing. */
export const engineLayer = <E>(
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

/** The HTTP server in front of an engine that loads in the background (`/health` says 503 until it is ready). */
export const serverLayer = (
  engine: Layer.Layer<RequestScheduler | Backend, EngineStartFailed>,
  http: HttpServerOptions,
  sessions: SessionSettingsInput,
  requestLog: Partial<RequestLogSettings> = {}
): Layer.Layer<HttpServer.HttpServer | ModelHost, HttpServerError.ServeError> =>
  WeftHttpServer.layer(http).pipe(
    Layer.provideMerge(ModelHost.layer(observedEngineLayer(engine, requestLog))),
    Layer.provide(ProcessMetrics.Default),
    // A session database that cannot be opened is a start-up failure, reported like any other.
    Layer.provide(Layer.orDie(SessionStore.layerSqlite(sessions)))
  )

type SessionSettingsInput = Parameters<typeof SessionStore.layerSqlite>[0]

/** node-llama-cpp as the engine. */
export const llamaBackendLayer = (config: LlamaBackendConfig): Layer.Layer<Backend, ModelLoadFailed> => LlamaBackend.layer(config)

/** The model `weft serve` loads: the configured GGUF, or the demo model, generated into the data dir once. */
export const modelPathOf = (settings: WeftSettings) =>
  settings.model === undefined ? ensureModel("demo", settings.dataDir) : Effect.succeed(settings.model)

/** node-llama-cpp behind the scheduler, as configured. */
export const llamaEngineLayer = (settings: WeftSettings) =>
  engineLayer(
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
          gpu: settings.gpu
        }))
    ),
    {
      maxQueue: settings.maxQueue,
      timeouts: { queueMs: settings.timeoutQueueMs, firstTokenMs: settings.timeoutFirstTokenMs, totalMs: settings.timeoutTotalMs },
      shutdownGraceMs: settings.shutdownGraceMs
    },
    { maxCachedTokens: settings.cacheMaxTokens, maxCachedBytes: settings.cacheMaxBytes }
  )

/** The composition root of `weft serve`: config → LlamaBackend → SeqPool → RequestScheduler → HTTP server. */
export const WeftLive: Layer.Layer<HttpServer.HttpServer | ModelHost, HttpServerError.ServeError, WeftConfig> = Layer.unwrapEffect(
  Effect.flatMap(WeftConfig, (settings) =>
    // The sessions database lives in the data dir, which a `--model` run may not have created yet.
    Effect.sync(() => {
      fs.mkdirSync(settings.dataDir, { recursive: true })
      return serverLayer(
        llamaEngineLayer(settings),
        {
          host: settings.host,
          port: settings.port,
          maxBodyBytes: settings.maxBodyBytes,
          shutdownGraceMs: settings.shutdownGraceMs
        },
        { databasePath: path.join(settings.dataDir, "sessions.sqlite"), ttlMs: settings.sessionTtlMs },
        { logText: settings.logText }
      ).pipe(Layer.provide(observabilityLayer(settings)))
    }))
)

/** Logging as configured, and span export over OTLP when `OTEL_EXPORTER_OTLP_*ENDPOINT` is set (off otherwise). */
export const observabilityLayer = (settings: Pick<WeftSettings, "logLevel" | "logFormat">): Layer.Layer<never> =>
  Layer.merge(JsonLogger.layer({ level: settings.logLevel, format: settings.logFormat }), OtlpTracing.fromEnv())

/** Options of `testServerLayer`; everything has a test-friendly default. */
export interface TestServerOptions {
  readonly scheduler?: Partial<SchedulerSettings>
  readonly cache?: Partial<PrefixCacheSettings>
  /** Defaults to an in-memory database. */
  readonly sessionsDatabasePath?: string
  readonly maxBodyBytes?: number
  readonly shutdownGraceMs?: number
  readonly logText?: boolean
  /** What the server is built under, such as a test logger or tracer; by default only errors are logged. */
  readonly observability?: Layer.Layer<never>
}

/** A server on 127.0.0.1 and a free port in front of any backend (LlamaBackend on a tiny model, or SimBackend). */
export const testServerLayer = <E extends EngineStartFailed>(
  backend: Layer.Layer<Backend, E>,
  options: TestServerOptions = {}
): Layer.Layer<HttpServer.HttpServer | ModelHost, HttpServerError.ServeError> =>
  serverLayer(
    engineLayer(backend, options.scheduler, options.cache),
    {
      host: "127.0.0.1",
      port: 0,
      maxBodyBytes: options.maxBodyBytes ?? 4 * 1024 * 1024,
      shutdownGraceMs: options.shutdownGraceMs ?? 0
    },
    { databasePath: options.sessionsDatabasePath ?? ":memory:" },
    { logText: options.logText ?? false }
  ).pipe(Layer.provide(options.observability ?? Logger.minimumLogLevel(LogLevel.Error)))
