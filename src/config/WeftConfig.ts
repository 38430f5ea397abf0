import { FileSystem } from "@effect/platform"
import { Config, Context, Effect, Either, Layer, Option, ParseResult, Schema } from "effect"
import * as path from "node:path"
import { logLevelNames } from "../observability/JsonLogger.js"
import type { LogLevelName } from "../observability/JsonLogger.js"

/** Everything `weft serve` needs, validated and defaulted. Durations are milliseconds; `undefined` means no limit. */
export interface WeftSettings {
  /** GGUF to serve; `undefined` serves the generated random-weights demo model. */
  readonly model: string | undefined
  readonly modelId: string | undefined
  readonly host: string
  readonly port: number
  readonly parallel: number
  /** KV cells per sequence. */
  readonly ctxSize: number
  readonly batchSize: number | undefined
  readonly threads: number | undefined
  /** Prompt tokens a generation prefills per decode step, so running streams stall by one chunk at most. */
  readonly prefillChunk: number
  readonly flashAttention: boolean
  readonly gpu: "auto" | false
  readonly maxQueue: number
  readonly timeoutQueueMs: number | undefined
  readonly timeoutFirstTokenMs: number | undefined
  readonly timeoutTotalMs: number | undefined
  readonly maxBodyBytes: number
  readonly shutdownGraceMs: number
  /** Where the demo model is generated and sessions are stored. */
  readonly dataDir: string
  /** Idle chat sessions are deleted after this long. */
  readonly sessionTtlMs: number
  /** Cached prefix tokens kept across slots; `undefined` is as many as the slots hold. */
  readonly cacheMaxTokens: number | undefined
  /** Estimated KV bytes of cached prefixes; `undefined` is no limit. */
  readonly cacheMaxBytes: number | undefined
  /** Least severe log level written. */
  readonly logLevel: LogLevelName
  /** `json`: one object per line; `pretty`: for a person at a terminal. */
  readonly logFormat: "json" | "pretty"
  /** Adds prompt and completion text to the per-request log lines. */
  readonly logText: boolean
}

/** The validated settings of this process. */
export class WeftConfig extends Context.Tag("weft/WeftConfig")<WeftConfig, WeftSettings>() {
  static layer = (settings: WeftSettings): Layer.Layer<WeftConfig> => Layer.succeed(WeftConfig, settings)
}

/** A setting's value does not parse; `key` is where it came from (`WEFT_PORT`, `--port`, `weft.json: "port"`). */
export class InvalidConfigValue extends Schema.TaggedError<InvalidConfigValue>()("InvalidConfigValue", {
  key: Schema.String,
  expected: Schema.String,
  got: Schema.String
}) {
  override get message(): string {
    return `${this.key}: expected ${this.expected}, got ${this.got}`
  }
}

/** The config file is missing, unreadable, not JSON, or has keys weft does not know. */
export class ConfigFileInvalid extends Schema.TaggedError<ConfigFileInvalid>()("ConfigFileInvalid", {
  path: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `config file ${this.path}: ${this.reason}`
  }
}

const MiB = 1024 * 1024

/** The defaults `npm start` runs with. */
export const defaultSettings: WeftSettings = {
  model: undefined,
  modelId: undefined,
  host: "127.0.0.1",
  port: 8080,
  parallel: 4,
  ctxSize: 2048,
  batchSize: undefined,
  threads: undefined,
  prefillChunk: 128,
  flashAttention: true,
  gpu: "auto",
  maxQueue: 64,
  timeoutQueueMs: 60_000,
  timeoutFirstTokenMs: undefined,
  timeoutTotalMs: undefined,
  maxBodyBytes: 4 * MiB,
  shutdownGraceMs: 10_000,
  dataDir: ".weft",
  sessionTtlMs: 24 * 60 * 60 * 1000,
  cacheMaxTokens: undefined,
  cacheMaxBytes: undefined,
  logLevel: "info",
  logFormat: "json",
  logText: false
}

// Value grammars: each setting decodes from text (flags, env) or from the text of a JSON scalar (config file).

const integerPattern = /^[+-]?\d+$/

const IntegerBetween = (min: number, max: number) =>
  Schema.String.pipe(
    Schema.pattern(integerPattern),
    Schema.compose(Schema.NumberFromString),
    Schema.compose(Schema.Int.pipe(Schema.between(min, max)))
  )

/** An integer setting's grammar and the text its errors show, from the same bounds. */
const integerSetting = (min: number, max: number) => ({
  schema: IntegerBetween(min, max),
  expected: `an integer between ${min} and ${max}`
})

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** `500ms`, `30s`, `2m`, `1h`; a bare number is seconds; `0`, `none` and `off` mean no limit. */
const OptionalDuration = Schema.transformOrFail(Schema.String, Schema.UndefinedOr(Schema.Number), {
  strict: true,
  decode: (text, _, ast) => {
    const trimmed = text.trim().toLowerCase()
    if (trimmed === "none" || trimmed === "off") return ParseResult.succeed(undefined)
    const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(trimmed)
    if (match === null) return ParseResult.fail(new ParseResult.Type(ast, text))
    const ms = Math.round(Number(match[1]) * durationUnits[match[2] ?? "s"]!)
    return ParseResult.succeed(ms === 0 ? undefined : ms)
  },
  encode: (ms) => ParseResult.succeed(ms === undefined ? "none" : `${ms}ms`)
})

/** A duration that must be given (zero allowed). */
/** A whole number, or `none` for no limit. */
const OptionalCount = Schema.transformOrFail(Schema.String, Schema.UndefinedOr(Schema.Number), {
  strict: true,
  decode: (text, _, ast) => {
    const trimmed = text.trim().toLowerCase()
    if (trimmed === "none" || trimmed === "off") return ParseResult.succeed(undefined)
    return /^\d+$/.test(trimmed) ? ParseResult.succeed(Number(trimmed)) : ParseResult.fail(new ParseResult.Type(ast, text))
  },
  encode: (count) => ParseResult.succeed(count === undefined ? "none" : String(count))
})

const RequiredDuration = OptionalDuration.pipe(
  Schema.transform(Schema.Number, { strict: true, decode: (ms) => ms ?? 0, encode: (ms) => (ms === 0 ? undefined : ms) })
)

const sizeUnits: Record<string, number> = { b: 1, k: 1024, kb: 1024, kib: 1024, m: MiB, mb: MiB, mib: MiB, g: 1024 * MiB, gb: 1024 * MiB, gib: 1024 * MiB }

/** `4MiB`, `512KiB`, `1048576`; K/M/G are binary (1024-based), a bare number is bytes. */
const ByteSize = Schema.transformOrFail(Schema.String, Schema.Number, {
  strict: true,
  decode: (text, _, ast) => {
    const match = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/.exec(text.trim().toLowerCase())
    const unit = match === null ? undefined : sizeUnits[match[2] === "" ? "b" : match[2]!]
    if (match === null || unit === undefined) return ParseResult.fail(new ParseResult.Type(ast, text))
    const bytes = Math.floor(Number(match[1]) * unit)
    return bytes >= 1024 ? ParseResult.succeed(bytes) : ParseResult.fail(new ParseResult.Type(ast, text))
  },
  encode: (bytes) => ParseResult.succeed(String(bytes))
})

/** A size, or `none` for no limit. */
const OptionalByteSize = Schema.transformOrFail(Schema.String, Schema.UndefinedOr(Schema.Number), {
  strict: true,
  decode: (text, options, ast) => {
    const trimmed = text.trim().toLowerCase()
    if (trimmed === "none" || trimmed === "off") return ParseResult.succeed(undefined)
    return ParseResult.decodeUnknown(ByteSize)(text, options).pipe(ParseResult.mapError(() => new ParseResult.Type(ast, text)))
  },
  encode: (bytes) => ParseResult.succeed(bytes === undefined ? "none" : String(bytes))
})

const NonEmptyText = Schema.String.pipe(
  Schema.compose(Schema.Trim),
  Schema.compose(Schema.NonEmptyString)
)

const LogLevelSetting = Schema.String.pipe(
  Schema.compose(Schema.Trim),
  Schema.compose(Schema.Lowercase),
  Schema.compose(Schema.Literal(...logLevelNames))
)

const LogFormat = Schema.String.pipe(Schema.compose(Schema.Trim), Schema.compose(Schema.Lowercase), Schema.compose(Schema.Literal("json", "pretty")))

const Switch = Schema.transformOrFail(Schema.String, Schema.Boolean, {
  strict: true,
  decode: (text, _, ast) => {
    const value = text.trim().toLowerCase()
    if (value === "on" || value === "true" || value === "yes" || value === "1") return ParseResult.succeed(true)
    if (value === "off" || value === "false" || value === "no" || value === "0") return ParseResult.succeed(false)
    return ParseResult.fail(new ParseResult.Type(ast, text))
  },
  encode: (on) => ParseResult.succeed(on ? "on" : "off")
})

const Gpu = Schema.transformOrFail(Schema.String, Schema.Union(Schema.Literal("auto"), Schema.Literal(false)), {
  strict: true,
  decode: (text, _, ast) => {
    const value = text.trim().toLowerCase()
    if (value === "auto" || value === "on" || value === "true") return ParseResult.succeed("auto" as const)
    if (value === "off" || value === "false" || value === "none") return ParseResult.succeed(false as const)
    return ParseResult.fail(new ParseResult.Type(ast, text))
  },
  encode: (gpu) => ParseResult.succeed(gpu === false ? "off" : "auto")
})

interface SettingSpec<K extends keyof WeftSettings> {
  readonly field: K
  /** The flag name, also the config file key. */
  readonly name: string
  readonly schema: Schema.Schema<WeftSettings[K], string> | Schema.Schema<Exclude<WeftSettings[K], undefined>, string>
  /** What a valid value looks like, for error messages. */
  readonly expected: string
  readonly description: string
}

const spec = <K extends keyof WeftSettings>(value: SettingSpec<K>): SettingSpec<K> => value

/** Every setting: its flag / config-file key, its `WEFT_*` variable, grammar and help text. */
export const settingSpecs = [
  spec({
    field: "model",
    name: "model",
    schema: NonEmptyText,
    expected: "a path to a .gguf file",
    description: "GGUF model to serve (default: a generated random-weights demo model)"
  }),
  spec({
    field: "modelId",
    name: "model-id",
    schema: NonEmptyText,
    expected: "a non-empty name",
    description: "Model id clients send as `model` (default: the file name without .gguf)"
  }),
  spec({ field: "host", name: "host", schema: NonEmptyText, expected: "a host name or IP address", description: "Address to listen on (default 127.0.0.1)" }),
  spec({ field: "port", name: "port", ...integerSetting(0, 65535), description: "Port to listen on; 0 picks a free one (default 8080)" }),
  spec({ field: "parallel", name: "parallel", ...integerSetting(1, 256), description: "Sequences decoded concurrently (default 4)" }),
  spec({ field: "ctxSize", name: "ctx-size", ...integerSetting(16, 1 << 20), description: "Context window per sequence, in tokens (default 2048)" }),
  spec({
    field: "batchSize",
    name: "batch-size",
    ...integerSetting(1, 1 << 20),
    description: "Most tokens one llama_decode call evaluates (default 512, less for small contexts)"
  }),
  spec({
    field: "threads",
    name: "threads",
    ...integerSetting(1, 1024),
    description: "CPU threads (default: the cores available; more threads than cores is much slower)"
  }),
  spec({
    field: "prefillChunk",
    name: "prefill-chunk",
    ...integerSetting(1, 1 << 20),
    description: "Prompt tokens prefilled per decode step beside the running streams: smaller keeps their latency lower while a long prompt is read, larger reads it sooner (default 128)"
  }),
  spec({
    field: "flashAttention",
    name: "flash-attention",
    schema: Switch,
    expected: "on or off",
    description: "llama.cpp flash attention (default on)"
  }),
  spec({ field: "gpu", name: "gpu", schema: Gpu, expected: "auto or off", description: "GPU offloading: auto or off (default auto)" }),
  spec({ field: "maxQueue", name: "max-queue", ...integerSetting(0, 1_000_000), description: "Requests that may wait for a slot before 429 (default 64)" }),
  spec({ field: "timeoutQueueMs", name: "timeout-queue", schema: OptionalDuration, expected: "a duration like 500ms, 30s, 2m, or none", description: "Longest wait for a slot before 408 (default 60s)" }),
  spec({ field: "timeoutFirstTokenMs", name: "timeout-first-token", schema: OptionalDuration, expected: "a duration like 500ms, 30s, 2m, or none", description: "Longest time from slot to first token before 504 (default none)" }),
  spec({ field: "timeoutTotalMs", name: "timeout-total", schema: OptionalDuration, expected: "a duration like 500ms, 30s, 2m, or none", description: "Longest time for a whole request before 504 (default none)" }),
  spec({ field: "maxBodyBytes", name: "max-body", schema: ByteSize, expected: "a size of at least 1KiB like 4MiB, 512KiB or 1048576", description: "Largest request body before 413 (default 4MiB)" }),
  spec({ field: "shutdownGraceMs", name: "shutdown-grace", schema: RequiredDuration, expected: "a duration like 500ms, 10s or 0", description: "On SIGINT/SIGTERM, how long in-flight requests may finish (default 10s)" }),
  spec({ field: "dataDir", name: "data-dir", schema: NonEmptyText, expected: "a directory path", description: "Where the demo model and the sessions database are kept (default ./.weft)" }),
  spec({ field: "sessionTtlMs", name: "session-ttl", schema: RequiredDuration, expected: "a duration like 30m, 24h or 0", description: "Idle chat sessions are deleted after this long (default 24h)" }),
  spec({
    field: "cacheMaxTokens",
    name: "cache-max-tokens",
    schema: OptionalCount,
    expected: "a whole number of tokens, or none",
    description: "Prefix-cache tokens kept across slots; LRU eviction starts at 80% (default: what the slots hold)"
  }),
  spec({
    field: "cacheMaxBytes",
    name: "cache-max-bytes",
    schema: OptionalByteSize,
    expected: "a size like 512MiB, or none",
    description: "Estimated KV bytes of cached prefixes; LRU eviction starts at 80% (default none)"
  }),
  spec({
    field: "logLevel",
    name: "log-level",
    schema: LogLevelSetting,
    expected: `one of ${logLevelNames.join(", ")}`,
    description: "Least severe log level written: trace, debug, info, warn, error, fatal, all or none (default info)"
  }),
  spec({ field: "logFormat", name: "log-format", schema: LogFormat, expected: "json or pretty", description: "Log lines as JSON objects, or pretty for a terminal (default json)" }),
  spec({
    field: "logText",
    name: "log-text",
    schema: Switch,
    expected: "on or off",
    description: "Put prompt and completion text in the per-request log lines (default off: they may hold anything)"
  })
] as const

type AnySpec = (typeof settingSpecs)[number]

/** `ctx-size` → `WEFT_CTX_SIZE`. */
export const envName = (name: string): string => `WEFT_${name.toUpperCase().replace(/-/g, "_")}`

/** Raw values as the command line gave them, by flag name. */
export type FlagValues = Readonly<Record<string, string | undefined>>

/** Where the settings come from, lowest precedence first: defaults ← config file ← env ← flags. */
export interface ConfigSources {
  readonly flags: FlagValues
  /** `--config`; `WEFT_CONFIG` when absent. */
  readonly configPath?: string | undefined
}

const describeRaw = (value: unknown): string => JSON.stringify(value) ?? String(value)

/** A setting's value as its source gave it: text from flags and env, any JSON value from the config file. */
interface RawValue {
  readonly key: string
  readonly value: unknown
}

const decodeSetting = (setting: AnySpec, raw: RawValue) => {
  const text = typeof raw.value === "string"
    ? raw.value
    : typeof raw.value === "number" || typeof raw.value === "boolean"
    ? String(raw.value)
    : undefined
  const invalid = () => new InvalidConfigValue({ key: raw.key, expected: setting.expected, got: describeRaw(raw.value) })
  if (text === undefined) return Either.left(invalid())
  return Schema.decodeUnknownEither(setting.schema as Schema.Schema<unknown, string>)(text).pipe(Either.mapLeft(invalid))
}

const readConfigFile = (file: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const text = yield* fs.readFileString(file).pipe(
      Effect.mapError((error) => new ConfigFileInvalid({ path: file, reason: error.message }))
    )
    const parsed = yield* Effect.try({
      try: (): unknown => JSON.parse(text),
      catch: (error) => new ConfigFileInvalid({ path: file, reason: `not valid JSON (${error instanceof Error ? error.message : String(error)})` })
    })
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      return yield* new ConfigFileInvalid({ path: file, reason: "expected a JSON object of settings" })
    }
    const known = new Set<string>(settingSpecs.map((setting) => setting.name))
    for (const key of Object.keys(parsed)) {
      if (!known.has(key)) {
        return yield* new ConfigFileInvalid({ path: file, reason: `unknown key "${key}" (keys are the flag names, e.g. "ctx-size")` })
      }
    }
    return parsed as Record<string, unknown>
  })

const checkModelFile = (model: string, key: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const info = yield* fs.stat(model).pipe(Effect.option)
    if (Option.isNone(info) || info.value.type !== "File") {
      return yield* new InvalidConfigValue({ key, expected: "a path to an existing .gguf file", got: describeRaw(model) })
    }
  })

/** Where a setting's value comes from: a flag, else `WEFT_*`, else the config file; `undefined` keeps the default. */
const highestPrecedence = (
  setting: AnySpec,
  flags: FlagValues,
  file: Readonly<Record<string, unknown>>,
  configPath: string | undefined
) =>
  Effect.gen(function*() {
    const fromFlag = flags[setting.name]
    if (fromFlag !== undefined) return { key: `--${setting.name}`, value: fromFlag } satisfies RawValue
    const fromEnv = yield* Config.option(Config.string(envName(setting.name)))
    if (Option.isSome(fromEnv)) return { key: envName(setting.name), value: fromEnv.value } satisfies RawValue
    if (configPath !== undefined && file[setting.name] !== undefined) {
      return { key: `${configPath}: "${setting.name}"`, value: file[setting.name] } satisfies RawValue
    }
    return undefined
  })

/**
 * Resolves the settings from defaults, the optional JSON config file, `WEFT_*` variables (read through Effect's
 * `ConfigProvider`) and flags. The first invalid value fails, naming where it came from.
 */
export const loadWeftSettings = Effect.fn("WeftConfig.load")(function*(sources: ConfigSources) {
  const configPath = sources.configPath ?? Option.getOrUndefined(yield* Config.option(Config.string("WEFT_CONFIG")))
  const file = configPath === undefined ? {} : yield* readConfigFile(configPath)
  const settings: Record<string, unknown> = { ...defaultSettings }
  const origin: Record<string, string> = {}

  for (const setting of settingSpecs) {
    const raw = yield* highestPrecedence(setting, sources.flags, file, configPath)
    if (raw === undefined) continue
    settings[setting.field] = yield* decodeSetting(setting, raw)
    origin[setting.field] = raw.key
  }

  const resolved = settings as unknown as WeftSettings
  // Paths in a config file are relative to the file, as a reader of that file would expect.
  const resolvePath = (field: "model" | "dataDir", value: string) =>
    configPath !== undefined && origin[field]?.startsWith(`${configPath}:`) === true
      ? path.resolve(path.dirname(configPath), value)
      : path.resolve(value)
  const model = resolved.model === undefined ? undefined : resolvePath("model", resolved.model)
  if (model !== undefined) yield* checkModelFile(model, origin.model ?? "model")
  return { ...resolved, model, dataDir: resolvePath("dataDir", resolved.dataDir) } satisfies WeftSettings
})
