import * as fs from "node:fs"
import * as path from "node:path"
import type { HttpServer } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { Effect, Layer } from "effect"
import { isLocalDeployment, localEngineId } from "./config/ModelsConfig.js"
import { WeftConfig } from "./config/WeftConfig.js"
import type { WeftSettings } from "./config/WeftConfig.js"
import { llamaEngineLayer, observedEngineLayer } from "./host/LocalEngine.js"
import type { EngineStartFailed } from "./host/LocalEngine.js"
import { ModelRegistry } from "./host/ModelRegistry.js"
import { AdapterContexts } from "./host/AdapterContexts.js"
import type { AdapterSettings } from "./host/AdapterContexts.js"
import { WeftHttpServer } from "./http/WeftHttpServer.js"
import { modelFileName } from "./model/generateModel.js"
import type { HttpServerOptions } from "./http/WeftHttpServer.js"
import type { Backend } from "./engine/Backend.js"
import { JsonLogger } from "./observability/JsonLogger.js"
import { OtlpTracing } from "./observability/OtlpTracing.js"
import { ProcessMetrics } from "./observability/ProcessMetrics.js"
import type { RequestLogSettings } from "./observability/RequestLog.js"
import type { RequestScheduler } from "./scheduler/RequestScheduler.js"
import { SessionKvConfig } from "./sessions/SessionKvFiles.js"
import type { SessionKvSettings } from "./sessions/SessionKvFiles.js"
import { SessionStore } from "./sessions/SessionStore.js"
import type { OpenServerRefused } from "./identity/AuthErrors.js"
import { KeyStore, keysDatabasePath } from "./identity/KeyStore.js"
import { AuditLog } from "./identity/AuditLog.js"
import type { AuditSettings } from "./identity/AuditLog.js"
import { RateLimiter } from "./identity/RateLimiter.js"

/** A model for `serverLayer`: its engine (a backend behind the scheduler) and, when known before loading, its id. */
export interface ServedModel {
  readonly id?: string | undefined
  readonly engine: Layer.Layer<RequestScheduler | Backend, EngineStartFailed>
}

/** The HTTP server in front of models that load in the background (`/health` says 503 until they are ready). */
export const serverLayer = (
  models: ReadonlyArray<ServedModel>,
  http: HttpServerOptions,
  sessions: SessionSettingsInput,
  requestLog: Partial<RequestLogSettings> = {},
  keys: { readonly databasePath: string } = { databasePath: ":memory:" },
  audit: AuditSettings = { path: undefined },
  adapters: AdapterSettings = { maxAdapters: defaultMaxAdapters, adapters: [] },
  sessionKv: SessionKvSettings | undefined = undefined
): Layer.Layer<HttpServer.HttpServer | ModelRegistry, HttpServerError.ServeError | OpenServerRefused> =>
  WeftHttpServer.layer(http).pipe(
    Layer.provide(AdapterContexts.layer(adapters)),
    Layer.provideMerge(
      ModelRegistry.layer(models.map((model) => ({ id: model.id, engine: observedEngineLayer(model.engine, requestLog) })))
    ),
    Layer.provide(ProcessMetrics.Default),
    Layer.provide(RateLimiter.Default),
    Layer.provide(AuditLog.Default(audit)),
    // A session database that cannot be opened is a start-up failure, reported like any other.
    Layer.provide(Layer.orDie(SessionStore.layerSqlite(sessions))),
    Layer.provide(Layer.orDie(KeyStore.layerSqlite(keys.databasePath))),
    // Read by each engine's SeqPool (adapter engines included) and the session routes.
    Layer.provide(SessionKvConfig.layer(sessionKv))
  )

/** Adapter contexts allowed at once when `--max-adapters` is not given. */
export const defaultMaxAdapters = 4

type SessionSettingsInput = Parameters<typeof SessionStore.layerSqlite>[0]

/**
 * The local engines of `weft serve`: `--model` (or the demo model when the config file names no models), and each
 * local deployment of the config file's `models` with its own pool size, context, queue and timeouts.
 */
export const servedModels = (settings: WeftSettings): ReadonlyArray<ServedModel> => {
  const configured = Object.entries(settings.models).flatMap(([modelId, model]) =>
    model.deployments.flatMap((deployment, index) => {
      if (!isLocalDeployment(deployment)) return []
      const id = localEngineId(modelId, model, index)
      return [{
        id,
        engine: llamaEngineLayer({
          ...settings,
          model: deployment.gguf,
          modelId: id,
          parallel: deployment.parallel ?? settings.parallel,
          ctxSize: deployment.ctxSize ?? settings.ctxSize,
          maxQueue: deployment.maxQueue ?? settings.maxQueue,
          timeoutQueueMs: deployment.timeoutQueueMs ?? settings.timeoutQueueMs,
          timeoutFirstTokenMs: deployment.timeoutFirstTokenMs ?? settings.timeoutFirstTokenMs,
          timeoutTotalMs: deployment.timeoutTotalMs ?? settings.timeoutTotalMs
        })
      }]
    })
  )
  const cliModel = settings.model !== undefined || Object.keys(settings.models).length === 0
    ? [{ id: settings.modelId, engine: llamaEngineLayer(settings) }]
    : []
  return [...cliModel, ...configured]
}

/** The id `weft serve` gives the `--model` model (or the demo model): `--model-id`, else the file name without `.gguf`. */
export const cliModelId = (settings: WeftSettings): string =>
  settings.modelId ?? path.basename(settings.model ?? modelFileName("demo")).replace(/\.gguf$/i, "")

/** The LoRA adapters of `weft serve`: `--lora` on the `--model` model, and each local deployment's `adapters`. */
export const servedAdapters = (settings: WeftSettings): AdapterSettings => {
  const configured = Object.entries(settings.models).flatMap(([modelId, model]) =>
    model.deployments.flatMap((deployment, index) =>
      isLocalDeployment(deployment)
        ? (deployment.adapters ?? []).map((adapter) => ({ model: localEngineId(modelId, model, index), name: adapter.name, path: adapter.path, scale: adapter.scale ?? 1 }))
        : []
    )
  )
  const cli = settings.lora.map((entry) => ({ model: cliModelId(settings), ...entry }))
  return { maxAdapters: settings.maxAdapters, adapters: [...cli, ...configured] }
}

/** The composition root of `weft serve`: config → ModelRegistry (LlamaBackend → SeqPool → RequestScheduler) → HTTP server. */
export const WeftLive: Layer.Layer<HttpServer.HttpServer | ModelRegistry, HttpServerError.ServeError | OpenServerRefused, WeftConfig> = Layer.unwrapEffect(
  Effect.flatMap(WeftConfig, (settings) =>
    // The sessions database lives in the data dir, which a `--model` run may not have created yet.
    Effect.sync(() => {
      fs.mkdirSync(settings.dataDir, { recursive: true })
      return serverLayer(
        servedModels(settings),
        {
          host: settings.host,
          port: settings.port,
          maxBodyBytes: settings.maxBodyBytes,
          shutdownGraceMs: settings.shutdownGraceMs,
          allowedHosts: settings.allowedHosts,
          corsOrigins: settings.corsOrigins,
          auth: { mode: settings.auth, metricsPublic: settings.metricsPublic }
        },
        { databasePath: path.join(settings.dataDir, "sessions.sqlite"), ttlMs: settings.sessionTtlMs },
        { logText: settings.logText },
        { databasePath: keysDatabasePath(settings.dataDir) },
        { path: settings.auditLog ?? path.join(settings.dataDir, "audit.jsonl") },
        servedAdapters(settings),
        settings.sessionKvMaxBytes === undefined ? undefined : { dir: path.join(settings.dataDir, "session-kv"), maxBytes: settings.sessionKvMaxBytes }
      ).pipe(Layer.provide(observabilityLayer(settings)))
    }))
)

/** Logging as configured, and span export over OTLP when `OTEL_EXPORTER_OTLP_*ENDPOINT` is set (off otherwise). */
export const observabilityLayer = (settings: Pick<WeftSettings, "logLevel" | "logFormat">): Layer.Layer<never> =>
  Layer.merge(JsonLogger.layer({ level: settings.logLevel, format: settings.logFormat }), OtlpTracing.fromEnv())
