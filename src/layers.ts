import * as fs from "node:fs"
import * as path from "node:path"
import type { HttpServer } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { Effect, Layer } from "effect"
import { isLocalDeployment, localEngineId } from "./config/ModelsConfig.js"
import type { LocalDeploymentConfig, ModelsConfig } from "./config/ModelsConfig.js"
import { ModelRouter } from "./upstream/ModelRouter.js"
import { defaultSettings, WeftConfig } from "./config/WeftConfig.js"
import type { WeftSettings } from "./config/WeftConfig.js"
import { accountedEngineLayer, llamaEngineLayer, observedEngineLayer } from "./host/LocalEngine.js"
import type { EngineStartFailed } from "./host/LocalEngine.js"
import { ModelRegistry } from "./host/ModelRegistry.js"
import type { ModelDefinition } from "./host/ModelRegistry.js"
import { defaultMemoryLimit, MemoryManager } from "./memory/MemoryManager.js"
import type { MemorySettings } from "./memory/MemoryManager.js"
import { WeftHttpServer } from "./http/WeftHttpServer.js"
import { ClusterGate } from "./cluster/ClusterGate.js"
import { clusterRunnerLayer } from "./cluster/ClusterRunner.js"
import type { HttpApiServices, HttpServerOptions } from "./http/WeftHttpServer.js"
import { AdapterContexts } from "./host/AdapterContexts.js"
import type { AdapterSettings } from "./host/AdapterContexts.js"
import { modelFileName } from "./model/generateModel.js"
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
import { rateLimiterLayer } from "./identity/SqlRateLimiter.js"
import { Alerts, AlertsConfig } from "./observability/Alerts.js"
import type { AlertSettings } from "./observability/AlertRules.js"
import { LiveEvents, LiveEventsConfig } from "./observability/LiveEvents.js"
import { Plugins, PluginsConfig } from "./plugins/Plugins.js"
import type { PluginSource } from "./plugins/Plugins.js"
import type { PluginLoadFailed } from "./plugins/PluginErrors.js"
import type { LiveEventsSettings } from "./observability/LiveEvents.js"
import { defaultTrainingThreads, FineTuningJobs } from "./training/jobs/FineTuningJobs.js"
import type { FineTuningSettings } from "./training/jobs/FineTuningJobs.js"

/** Fine-tuning for `serverLayer`: a fine-tuned model is served, by default, like a GGUF loaded through `/admin/models`. */
export type FineTuningInput = Omit<FineTuningSettings, "serveModel"> & { readonly serveModel?: FineTuningSettings["serveModel"] | undefined }

/** The dashboard's event stream, the alert rules and the plugins; defaults (and no plugins) when not given. */
export interface OperationsSettings {
  readonly alerts?: AlertSettings | undefined
  readonly liveEvents?: Partial<LiveEventsSettings> | undefined
  readonly plugins?: ReadonlyArray<PluginSource> | undefined
}

/** The live event stream, the alert evaluator (over the models and the process) and the plugins. */
const operationsLayer = (operations: OperationsSettings) =>
  LiveEvents.Default.pipe(
    Layer.provideMerge(Alerts.Default),
    Layer.merge(Plugins.Default.pipe(Layer.provide(PluginsConfig.layer(operations.plugins)))),
    Layer.provide(LiveEventsConfig.layer(operations.liveEvents)),
    Layer.provide(AlertsConfig.layer(operations.alerts))
  )

/** A model for `serverLayer`: its engine (a backend behind the scheduler) and, when known before loading, its id. */
export interface ServedModel {
  readonly id?: string | undefined
  readonly engine: Layer.Layer<RequestScheduler | Backend, EngineStartFailed>
  /** How long its requests wait while it loads (its queue timeout); without it they get 503 at once. */
  readonly loadWaitMs?: number | undefined
}

/** What `POST /admin/models` loads for an id and a local deployment; by default a GGUF with the default settings. */
export type LocalModelFactory = (id: string, deployment: LocalDeploymentConfig) => ServedModel & { readonly id: string }

/** The HTTP server in front of models that load in the background (`/health` says 503 until they are ready). */
export const serverLayer = (
  models: ReadonlyArray<ServedModel>,
  http: HttpServerOptions & { readonly localModel?: LocalModelFactory | undefined },
  sessions: SessionSettingsInput,
  requestLog: Partial<RequestLogSettings> = {},
  keys: { readonly databasePath: string } = { databasePath: ":memory:" },
  audit: AuditSettings = { path: undefined },
  operations: OperationsSettings = {},
  memory: MemorySettings = { limitBytes: defaultMemoryLimit() },
  routed: ModelsConfig = {},
  adapters: AdapterSettings = { maxAdapters: defaultMaxAdapters, adapters: [] },
  sessionKv: SessionKvSettings | undefined = undefined,
  fineTuning: FineTuningInput | undefined = undefined
): Layer.Layer<HttpServer.HttpServer | ModelRegistry | MemoryManager, HttpServerError.ServeError | OpenServerRefused | PluginLoadFailed> =>
  Layer.unwrapEffect(
    Effect.map(MemoryManager, (memoryManager) => {
      const define = <M extends ServedModel>(model: M): ModelDefinition & { readonly id: M["id"] } => ({
        id: model.id,
        loadWaitMs: model.loadWaitMs,
        engine: accountedEngineLayer(observedEngineLayer(model.engine, requestLog), memoryManager)
      })
      const localModel = http.localModel ?? ((id, deployment) => localServedModel(defaultSettings, id, deployment))
      return WeftHttpServer.layer({ ...http, defineModel: (id, deployment) => define(localModel(id, deployment)) }).pipe(
        // The config file's routed models (upstream deployments, several deployments, fallbacks): see src/upstream/.
        Layer.provide(ModelRouter.layer(routed)),
        Layer.provide(AdapterContexts.layer(adapters)),
        Layer.provide(httpApiServicesLayer(sessions, keys, audit, operations)),
        // Without settings the fine-tuning routes answer 404.
        Layer.provide(
          fineTuning === undefined
            ? Layer.empty
            : FineTuningJobs.layer({ ...fineTuning, serveModel: fineTuning.serveModel ?? ((id, gguf) => define(localModel(id, { gguf }))) })
        ),
        Layer.provideMerge(ModelRegistry.layer(models.map(define)))
      )
    })
  ).pipe(
    Layer.provideMerge(MemoryManager.layer(memory)),
    // Read by each engine's SeqPool (adapter engines included) and the session routes.
    Layer.provide(SessionKvConfig.layer(sessionKv))
  )

/** Adapter contexts allowed at once when `--max-adapters` is not given. */
export const defaultMaxAdapters = 4

type SessionSettingsInput = Parameters<typeof SessionStore.layerSqlite>[0]

/**
 * What Weft's HTTP API needs besides the models (see `WeftHttpServer.app`): sessions, API keys, rate limits, audit,
 * process metrics, the dashboard's event stream, alerts and plugins.
 */
export const httpApiServicesLayer = (
  sessions: SessionSettingsInput = { databasePath: ":memory:" },
  keys: { readonly databasePath: string } = { databasePath: ":memory:" },
  audit: AuditSettings = { path: undefined },
  operations: OperationsSettings = {}
): Layer.Layer<Exclude<HttpApiServices, ModelRegistry | MemoryManager | AdapterContexts>, PluginLoadFailed, ModelRegistry> =>
  operationsLayer(operations).pipe(
    // Keys, sessions and rate limits are shared through Postgres when their location is a postgres:// URL (a cluster).
    Layer.provideMerge(Layer.mergeAll(ProcessMetrics.Default, Layer.orDie(rateLimiterLayer(keys.databasePath)), AuditLog.Default(audit))),
    // A session database that cannot be opened is a start-up failure, reported like any other.
    Layer.provideMerge(Layer.orDie(SessionStore.layer(sessions))),
    Layer.provideMerge(Layer.orDie(KeyStore.layer(keys.databasePath)))
  )

/**
 * The local engines of `weft serve`: `--model` (or the demo model when the config file names no models), and each
 * local deployment of the config file's `models` with its own pool size, context, queue and timeouts.
 */
export const servedModels = (settings: WeftSettings): ReadonlyArray<ServedModel> => {
  const configured = Object.entries(settings.models).flatMap(([modelId, model]) =>
    model.deployments.flatMap((deployment, index) =>
      isLocalDeployment(deployment) ? [localServedModel(settings, localEngineId(modelId, model, index), deployment)] : []
    )
  )
  const cliModel = settings.model !== undefined || Object.keys(settings.models).length === 0
    ? [{ id: settings.modelId, engine: llamaEngineLayer(settings), loadWaitMs: settings.timeoutQueueMs }]
    : []
  return [...cliModel, ...configured]
}

/** A local GGUF deployment served under `id`: its own pool size, context, queue and timeouts over `settings`. */
export const localServedModel = (settings: WeftSettings, id: string, deployment: LocalDeploymentConfig): ServedModel & { readonly id: string } => {
  const timeoutQueueMs = deployment.timeoutQueueMs ?? settings.timeoutQueueMs
  return {
    id,
    loadWaitMs: timeoutQueueMs,
    engine: llamaEngineLayer({
      ...settings,
      model: deployment.gguf,
      modelId: id,
      parallel: deployment.parallel ?? settings.parallel,
      ctxSize: deployment.ctxSize ?? settings.ctxSize,
      maxQueue: deployment.maxQueue ?? settings.maxQueue,
      timeoutQueueMs,
      timeoutFirstTokenMs: deployment.timeoutFirstTokenMs ?? settings.timeoutFirstTokenMs,
      timeoutTotalMs: deployment.timeoutTotalMs ?? settings.timeoutTotalMs
    })
  }
}

/**
 * One local model in process, without the HTTP server: `weft serve`'s engine for the same settings (the demo model,
 * generated into `dataDir`, unless `model` names a GGUF file). What `WeftLanguageModel` and `WeftEmbeddingModel` run on.
 */
export const localModelLayer = (settings: Partial<WeftSettings> = {}): Layer.Layer<ModelRegistry | MemoryManager | AdapterContexts> =>
  AdapterContexts.layer({ maxAdapters: settings.maxAdapters ?? defaultMaxAdapters, adapters: [] }).pipe(
    Layer.provideMerge(ModelRegistry.layer([{ id: settings.modelId, engine: observedEngineLayer(llamaEngineLayer({ ...defaultSettings, ...settings })) }])),
    Layer.provideMerge(MemoryManager.layer({ limitBytes: settings.memoryLimit ?? defaultMemoryLimit() }))
  )

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
export const WeftLive: Layer.Layer<HttpServer.HttpServer | ModelRegistry, HttpServerError.ServeError | OpenServerRefused | PluginLoadFailed, WeftConfig> = Layer.unwrapEffect(
  Effect.flatMap(WeftConfig, (settings) =>
    // The sessions database lives in the data dir, which a `--model` run may not have created yet.
    Effect.sync(() => {
      fs.mkdirSync(settings.dataDir, { recursive: true })
      const server = serverLayer(
        servedModels(settings),
        {
          host: settings.host,
          port: settings.port,
          maxBodyBytes: settings.maxBodyBytes,
          shutdownGraceMs: settings.shutdownGraceMs,
          allowedHosts: settings.allowedHosts,
          corsOrigins: settings.corsOrigins,
          auth: { mode: settings.auth, metricsPublic: settings.metricsPublic },
          localModel: (id, deployment) => localServedModel(settings, id, deployment)
        },
        // Clustered, sessions are shared in Postgres: a session's next turn resumes on whichever replica owns it then.
        { databasePath: settings.cluster ?? path.join(settings.dataDir, "sessions.sqlite"), ttlMs: settings.sessionTtlMs },
        { logText: settings.logText },
        { databasePath: settings.cluster ?? keysDatabasePath(settings.dataDir) },
        { path: settings.auditLog ?? path.join(settings.dataDir, "audit.jsonl") },
        { alerts: settings.alerts, plugins: settings.plugins.map((plugin) => ({ _tag: "Path", path: plugin }) as const) },
        { limitBytes: settings.memoryLimit ?? defaultMemoryLimit() },
        settings.models,
        servedAdapters(settings),
        settings.sessionKvMaxBytes === undefined ? undefined : { dir: path.join(settings.dataDir, "session-kv"), maxBytes: settings.sessionKvMaxBytes },
        fineTuningSettings(settings)
      ).pipe(Layer.provide(observabilityLayer(settings)))
      // With --cluster the runner joins after the server is up (its entities call the server) and leaves before it.
      const cluster = settings.cluster
      return cluster === undefined
        ? server
        : clusterRunnerLayer({ ...settings, cluster }).pipe(Layer.provideMerge(server), Layer.provide(ClusterGate.layer))
    }))
)

/** Fine-tuning of `weft serve`: files and jobs in the data dir (in the cluster's Postgres with --cluster); the `--model` model and local deployments can be trained. */
export const fineTuningSettings = (settings: WeftSettings): FineTuningInput => {
  const configured = Object.entries(settings.models).flatMap(([modelId, model]) =>
    model.deployments.flatMap((deployment, index) => (isLocalDeployment(deployment) ? [[localEngineId(modelId, model, index), deployment.gguf] as const] : []))
  )
  return {
    dataDir: settings.dataDir,
    // Clustered, files and jobs are shared in Postgres: any replica serves them and trains a queued job.
    database: settings.cluster,
    concurrency: settings.fineTuningConcurrency,
    trainingThreads: settings.trainingThreads ?? defaultTrainingThreads(),
    maxUploadBytes: settings.maxUploadBytes,
    checkpointEvery: 10,
    baseLearningRate: 1e-3,
    baseModels: Object.fromEntries([...(settings.model === undefined ? [] : [[cliModelId(settings), settings.model] as const]), ...configured])
  }
}

/** Logging as configured, and span export over OTLP when `OTEL_EXPORTER_OTLP_*ENDPOINT` is set (off otherwise). */
export const observabilityLayer = (settings: Pick<WeftSettings, "logLevel" | "logFormat">): Layer.Layer<never> =>
  Layer.merge(JsonLogger.layer({ level: settings.logLevel, format: settings.logFormat }), OtlpTracing.fromEnv())
