import { logLevelNames } from "../observability/JsonLogger.js"
import {
  authSetting,
  binarySetting,
  decodePathSetting,
  mmapSetting,
  byteSize,
  gpuSetting,
  hostList,
  integerBetween,
  logFormatSetting,
  logLevelSetting,
  loraList,
  nonEmptyText,
  openMpWaitSetting,
  onOff,
  optionalByteSize,
  optionalCount,
  optionalDuration,
  originList,
  pathList,
  postgresUrl,
  requiredDuration
} from "./SettingGrammar.js"
import type { SettingGrammar } from "./SettingGrammar.js"
import type { WeftSettings } from "./WeftSettings.js"

/** One setting: the field it fills, its flag name (also its config-file key and, upper-cased, its `WEFT_*` variable). */
export interface SettingSpec<K extends keyof WeftSettings> extends Omit<SettingGrammar<WeftSettings[K]>, "schema"> {
  readonly field: K
  readonly name: string
  /** Optional settings may have a grammar that cannot say "unset": leaving them out keeps the default. */
  readonly schema: SettingGrammar<WeftSettings[K]>["schema"] | SettingGrammar<Exclude<WeftSettings[K], undefined>>["schema"]
  readonly description: string
}

const spec = <K extends keyof WeftSettings>(
  field: K,
  name: string,
  grammar: SettingGrammar<WeftSettings[K]> | SettingGrammar<Exclude<WeftSettings[K], undefined>>,
  description: string
): SettingSpec<K> => ({ field, name, ...grammar, description })

/** Every setting of `weft serve`; flags, env names, config-file keys, help and validation all come from here. */
export const settingSpecs = [
  spec("model", "model", nonEmptyText("a path to a .gguf file", { _tag: "file" }), "GGUF model to serve (default: a generated random-weights demo model)"),
  spec("modelId", "model-id", nonEmptyText("a non-empty name", { _tag: "text", pseudoName: "NAME" }), "Model id clients send as `model` (default: the file name without .gguf)"),
  spec("host", "host", nonEmptyText("a host name or IP address", { _tag: "text", pseudoName: "HOST" }), "Address to listen on (default 127.0.0.1)"),
  spec(
    "allowedHosts",
    "allowed-hosts",
    hostList,
    "Host header names (any port) answered; others get 403, against DNS rebinding. * is any (default: localhost, 127.0.0.1, [::1] when bound to loopback, else any)"
  ),
  spec(
    "corsOrigins",
    "cors-origins",
    originList,
    "Browser origins allowed to call the API (CORS preflights and Access-Control-Allow-Origin); * is any (default none)"
  ),
  spec("port", "port", integerBetween(0, 65535), "Port to listen on; 0 picks a free one (default 8080)"),
  spec("parallel", "parallel", integerBetween(1, 256), "Sequences decoded concurrently (default 4)"),
  spec("ctxSize", "ctx-size", integerBetween(16, 1 << 20), "Context window per sequence, in tokens (default 2048)"),
  spec("batchSize", "batch-size", integerBetween(1, 1 << 20), "Most tokens one llama_decode call evaluates (default 512, less for small contexts)"),
  spec("threads", "threads", integerBetween(1, 1024), "CPU threads (default: the cores available; more threads than cores is much slower)"),
  spec(
    "prefillChunk",
    "prefill-chunk",
    integerBetween(1, 1 << 20),
    "Prompt tokens prefilled per decode step beside the running streams: smaller keeps their latency lower while a long prompt is read, larger reads it sooner (default 128)"
  ),
  spec("flashAttention", "flash-attention", onOff, "llama.cpp flash attention (default on)"),
  spec("gpu", "gpu", gpuSetting, "GPU offloading: auto or off (default auto)"),
  spec(
    "binary",
    "binary",
    binarySetting,
    "llama.cpp binary: native (the build of `weft build-native`, CPU only), prebuilt, or auto = native when it loads (default auto)"
  ),
  spec(
    "decodePath",
    "decode-path",
    decodePathSetting,
    "How decode steps reach llama.cpp: direct (Weft issues each step's batch and sampling to the native context; with the native build, decodes of up to 64 tokens and all sampling on the JS thread itself), direct-async (the same, always on libuv threads), or evaluate (through node-llama-cpp's sequence.evaluate, slower per token). Models that need node-llama-cpp's KV checkpoints (sliding-window, hybrid, recurrent) always use evaluate (default direct)"
  ),
  spec(
    "mmap",
    "mmap",
    mmapSetting,
    "How model weights are loaded: off reads them into memory (with the native build, on transparent huge pages: decoding reads every weight per token, 1.1-1.2x the tokens per second at one stream on the bench model), on maps the file (loads lazily; the pages are shared with other processes and can be evicted), auto = off with the native build, on otherwise (default auto)"
  ),
  spec(
    "openMpWait",
    "openmp-wait",
    openMpWaitSetting,
    "How an OpenMP build's threads wait: passive (sleep at once; holds up when other processes share the cores), active (spin), or a spin count. Default: OMP_WAIT_POLICY/GOMP_SPINCOUNT from the environment if set, else passive. Weft's own native build has no OpenMP (its ggml threadpool's idle polling is WEFT_GGML_POLL)"
  ),
  spec("maxQueue", "max-queue", integerBetween(0, 1_000_000), "Requests that may wait for a slot before 429 (default 64)"),
  spec("timeoutQueueMs", "timeout-queue", optionalDuration, "Longest wait for a slot before 408 (default 60s)"),
  spec("timeoutFirstTokenMs", "timeout-first-token", optionalDuration, "Longest time from slot to first token before 504 (default none)"),
  spec("timeoutTotalMs", "timeout-total", optionalDuration, "Longest time for a whole request before 504 (default none)"),
  spec("maxBodyBytes", "max-body", byteSize, "Largest request body before 413 (default 4MiB)"),
  spec("shutdownGraceMs", "shutdown-grace", requiredDuration("500ms, 10s or 0"), "On SIGINT/SIGTERM, how long in-flight requests may finish (default 10s)"),
  spec("dataDir", "data-dir", nonEmptyText("a directory path", { _tag: "directory" }), "Where the demo model and the sessions database are kept (default ./.weft)"),
  spec(
    "auditLog",
    "audit-log",
    nonEmptyText("a file path", { _tag: "text", pseudoName: "PATH" }),
    "Append-only JSONL audit log: one record per request and per key or tenant change (default: audit.jsonl in the data dir)"
  ),
  spec("sessionTtlMs", "session-ttl", requiredDuration("30m, 24h or 0"), "Idle chat sessions are deleted after this long (default 24h)"),
  spec(
    "cacheMaxTokens",
    "cache-max-tokens",
    optionalCount("tokens"),
    "Prefix-cache tokens kept across slots; LRU eviction starts at 80% (default: what the slots hold)"
  ),
  spec("cacheMaxBytes", "cache-max-bytes", optionalByteSize, "Estimated KV bytes of cached prefixes; LRU eviction starts at 80% (default none)"),
  spec(
    "memoryLimit",
    "memory-limit",
    optionalByteSize,
    "RAM that models and their contexts may commit (node-llama-cpp's estimates) and the process may use (RSS): a model that would not fit is refused, and under pressure cached prefixes are evicted, then requests get 503 (default: 80% of system memory)"
  ),
  spec("logLevel", "log-level", logLevelSetting, `Least severe log level written: ${logLevelNames.join(", ")} (default info)`),
  spec("logFormat", "log-format", logFormatSetting, "Log lines as JSON objects, or pretty for a terminal (default json)"),
  spec(
    "auth",
    "auth",
    authSetting,
    "API-key authentication: on, off, or auto = on once a key exists (default auto; with no keys, a non-loopback --host needs --auth off)"
  ),
  spec("metricsPublic", "metrics-public", onOff, "Serve /metrics without an admin key (default off)"),
  spec("plugins", "plugin", pathList, "A plugin module to load (repeatable; see examples/plugins/); in the config file a list of paths"),
  spec("lora", "lora", loraList, "A LoRA adapter on the --model model, served as MODEL:NAME; repeat for more (default none)"),
  spec(
    "maxAdapters",
    "max-adapters",
    integerBetween(1, 1024),
    "Adapter contexts at once, each with its own slots and KV cache; the least recently used idle one makes room (default 4)"
  ),
  spec(
    "sessionKvMaxBytes",
    "session-kv-max",
    optionalByteSize,
    "Disk for chat sessions' saved KV states in the data dir, least recently saved deleted first; none keeps them in memory only (default 1GiB)"
  ),
  spec("fineTuningConcurrency", "fine-tuning-concurrency", integerBetween(1, 64), "Fine-tuning jobs that train at once; the rest wait in the priority queue (default 1)"),
  spec(
    "trainingThreads",
    "training-threads",
    integerBetween(1, 1024),
    "CPU threads each training job uses, so inference keeps the rest (default: half the cores, at least 1)"
  ),
  spec("maxUploadBytes", "max-upload", byteSize, "Largest file POST /v1/files accepts before 413 (default 256MiB)"),
  spec(
    "cluster",
    "cluster",
    postgresUrl,
    "Join the cluster whose runner and message storage live in this Postgres database: sessions are served by the replica owning their shard, other requests by the least loaded replica (default: no cluster)"
  ),
  spec("clusterHost", "cluster-host", nonEmptyText("a host name or IP address", { _tag: "text", pseudoName: "HOST" }), "Address other replicas reach this one at, for the cluster runner and forwarded HTTP (default: --host, or the machine's host name when --host is a wildcard)"),
  spec("clusterPort", "cluster-port", integerBetween(1, 65535), "Port of this replica's cluster runner (default 34431)"),
  spec("logText", "log-text", onOff, "Put prompt and completion text in the per-request log lines (default off: they may hold anything)")
] as const

/** Any one of `settingSpecs`. */
export type AnySettingSpec = (typeof settingSpecs)[number]

/** `ctx-size` → `WEFT_CTX_SIZE`. */
export const envName = (name: string): string => `WEFT_${name.toUpperCase().replace(/-/g, "_")}`
