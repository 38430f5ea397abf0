import { Schema } from "effect"
import { logLevelNames } from "../observability/JsonLogger.js"
import { ModelsConfig } from "./ModelsConfig.js"
import { logFormats, OpenMpWaitSchema } from "./SettingGrammar.js"
import { binaryPreferences, mmapPreferences } from "../engine/llama/LlamaBinary.js"
import { AlertSettings } from "../observability/AlertRules.js"

/** Everything `weft serve` needs, validated and defaulted. Durations are milliseconds; `undefined` means no limit. */
export const WeftSettings = Schema.Struct({
  /** GGUF to serve; `undefined` serves the generated random-weights demo model. */
  model: Schema.UndefinedOr(Schema.String),
  modelId: Schema.UndefinedOr(Schema.String),
  host: Schema.String,
  /** `Host` names answered; `undefined` is the loopback names when bound to loopback, else any. */
  allowedHosts: Schema.UndefinedOr(Schema.Array(Schema.String)),
  /** Browser origins allowed by CORS; `*` is any. */
  corsOrigins: Schema.Array(Schema.String),
  port: Schema.Int,
  parallel: Schema.Int,
  /** KV cells per sequence. */
  ctxSize: Schema.Int,
  batchSize: Schema.UndefinedOr(Schema.Int),
  threads: Schema.UndefinedOr(Schema.Int),
  /** Prompt tokens a generation prefills per decode step, so running streams stall by one chunk at most. */
  prefillChunk: Schema.Int,
  flashAttention: Schema.Boolean,
  gpu: Schema.Union(Schema.Literal("auto"), Schema.Literal(false)),
  /** Which llama.cpp binary to load; see `LlamaBinary`. */
  binary: Schema.Literal(...binaryPreferences),
  /** How decode steps reach llama.cpp; see `LlamaBackendConfig.directSteps`. */
  decodePath: Schema.Literal("direct", "direct-async", "evaluate"),
  /** How model weights are loaded; see `LlamaBackendConfig.mmap`. */
  mmap: Schema.Literal(...mmapPreferences),
  /** How a native build's OpenMP threads wait; `undefined`: the environment's OMP_WAIT_POLICY/GOMP_SPINCOUNT, else passive. */
  openMpWait: Schema.UndefinedOr(OpenMpWaitSchema),
  maxQueue: Schema.Int,
  timeoutQueueMs: Schema.UndefinedOr(Schema.Number),
  timeoutFirstTokenMs: Schema.UndefinedOr(Schema.Number),
  timeoutTotalMs: Schema.UndefinedOr(Schema.Number),
  maxBodyBytes: Schema.Number,
  shutdownGraceMs: Schema.Number,
  /** Where the demo model is generated and sessions are stored. */
  dataDir: Schema.String,
  /** The audit log (JSONL); `undefined` is `audit.jsonl` in the data dir. */
  auditLog: Schema.UndefinedOr(Schema.String),
  /** Idle chat sessions are deleted after this long. */
  sessionTtlMs: Schema.Number,
  /** Cached prefix tokens kept across slots; `undefined` is as many as the slots hold. */
  cacheMaxTokens: Schema.UndefinedOr(Schema.Number),
  /** Estimated KV bytes of cached prefixes; `undefined` is no limit. */
  cacheMaxBytes: Schema.UndefinedOr(Schema.Number),
  /** Least severe log level written. */
  logLevel: Schema.Literal(...logLevelNames),
  /** `json`: one object per line; `pretty`: for a person at a terminal. */
  logFormat: Schema.Literal(...logFormats),
  /** Adds prompt and completion text to the per-request log lines. */
  logText: Schema.Boolean,
  /** API-key authentication; `auto` is on once a key exists. */
  auth: Schema.Literal("on", "off", "auto"),
  /** `/metrics` answers without an admin key. */
  metricsPublic: Schema.Boolean,
  /** RAM models and contexts may commit, and RSS may reach, before loads and requests are refused; `undefined` is 80% of system memory. */
  memoryLimit: Schema.UndefinedOr(Schema.Number),
  /** `--lora`: adapters on the `--model` model. */
  lora: Schema.Array(Schema.Struct({ name: Schema.String, path: Schema.String, scale: Schema.Number })),
  /** Adapter contexts that may exist at once. */
  maxAdapters: Schema.Int,
  /** Bytes of saved session KV states in the data dir; `undefined` saves none. */
  sessionKvMaxBytes: Schema.UndefinedOr(Schema.Number),
  /** Fine-tuning jobs that train at once. */
  fineTuningConcurrency: Schema.Int,
  /** CPU threads each training job uses; `undefined` is half the cores (at least 1), so serving keeps the rest. */
  trainingThreads: Schema.UndefinedOr(Schema.Number),
  /** Largest file `POST /v1/files` accepts. */
  maxUploadBytes: Schema.Number,
  /** Postgres URL of the cluster this replica joins; `undefined` runs alone. */
  cluster: Schema.UndefinedOr(Schema.String),
  /** Where other replicas reach this one; `undefined` is `host` (the machine's name when `host` is a wildcard). */
  clusterHost: Schema.UndefinedOr(Schema.String),
  /** This replica's cluster runner port. */
  clusterPort: Schema.Int,
  /** The config file's `models`: ids served by local GGUFs or upstream servers, with routing; see `ModelsConfig`. */
  models: ModelsConfig,
  /** Plugin module paths (`--plugin`). */
  plugins: Schema.Array(Schema.String),
  /** The config file's `alerts` object (rules, webhooks); the built-in rules when absent. */
  alerts: Schema.optional(Schema.typeSchema(AlertSettings))
})

/** Everything `weft serve` needs, validated and defaulted. */
export interface WeftSettings extends Schema.Schema.Type<typeof WeftSettings> {}

const MiB = 1024 * 1024

/** The defaults `npm start` runs with. */
export const defaultSettings: WeftSettings = {
  model: undefined,
  modelId: undefined,
  host: "127.0.0.1",
  allowedHosts: undefined,
  corsOrigins: [],
  port: 8080,
  parallel: 4,
  ctxSize: 2048,
  batchSize: undefined,
  threads: undefined,
  prefillChunk: 128,
  flashAttention: true,
  gpu: "auto",
  binary: "auto",
  decodePath: "direct",
  mmap: "auto",
  openMpWait: undefined,
  maxQueue: 64,
  timeoutQueueMs: 60_000,
  timeoutFirstTokenMs: undefined,
  timeoutTotalMs: undefined,
  maxBodyBytes: 4 * MiB,
  shutdownGraceMs: 10_000,
  dataDir: ".weft",
  auditLog: undefined,
  sessionTtlMs: 24 * 60 * 60 * 1000,
  cacheMaxTokens: undefined,
  cacheMaxBytes: undefined,
  logLevel: "info",
  logFormat: "json",
  logText: false,
  auth: "auto",
  metricsPublic: false,
  memoryLimit: undefined,
  sessionKvMaxBytes: 1024 * MiB,
  fineTuningConcurrency: 1,
  trainingThreads: undefined,
  maxUploadBytes: 256 * MiB,
  lora: [],
  maxAdapters: 4,
  cluster: undefined,
  clusterHost: undefined,
  clusterPort: 34431,
  models: {},
  plugins: []
}
