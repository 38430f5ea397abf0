import { FileSystem } from "@effect/platform"
import { Array as Arr, Config, Context, Effect, Either, Layer, Option, Schema } from "effect"
import * as path from "node:path"
import { quoteValue } from "../http/QuotedValue.js"
import type { FlagType } from "./SettingGrammar.js"
import { decodeModelsConfig, isLocalDeployment } from "./ModelsConfig.js"
import { envName, settingSpecs } from "./SettingSpecs.js"
import type { AnySettingSpec } from "./SettingSpecs.js"
import { defaultSettings, WeftSettings } from "./WeftSettings.js"
import { AlertSettings } from "../observability/AlertRules.js"

export { defaultSettings, WeftSettings }

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

/** Raw values as the command line gave them, by flag name. */
export type FlagValues = Readonly<Record<string, string | undefined>>

/** Where the settings come from, lowest precedence first: defaults ← config file ← env ← flags. */
export interface ConfigSources {
  readonly flags: FlagValues
  /** `--config`; `WEFT_CONFIG` when absent. */
  readonly configPath?: string | undefined
}

const describeRaw = (value: unknown): string => quoteValue(value)

/** A setting's value as its source gave it: text from flags and env, any JSON value from the config file. */
interface RawValue {
  readonly key: string
  readonly value: unknown
}

const invalidValue = (setting: AnySettingSpec, raw: RawValue) =>
  new InvalidConfigValue({ key: raw.key, expected: setting.expected, got: describeRaw(raw.value) })

const decodeSetting = (setting: AnySettingSpec, raw: RawValue) => {
  const text = typeof raw.value === "string"
    ? raw.value
    : typeof raw.value === "number" || typeof raw.value === "boolean"
    ? String(raw.value)
    // A config file may give a list setting as an array of strings.
    : Array.isArray(raw.value) && raw.value.every((entry) => typeof entry === "string")
    ? raw.value.join(",")
    : undefined
  if (text === undefined) return Either.left(invalidValue(setting, raw))
  return Schema.decodeUnknownEither(setting.schema as Schema.Schema<unknown, string>)(text).pipe(
    Either.mapLeft(() => invalidValue(setting, raw))
  )
}

/** Whether a flag's value passes what the CLI checks before the settings see it: a choice's words as listed, a path's type. */
const passesCliParsing = (flag: FlagType, value: string) =>
  Effect.gen(function*() {
    if (flag._tag === "choice") return flag.choices.includes(value)
    if (flag._tag !== "file" && flag._tag !== "directory") return true
    const info = yield* (yield* FileSystem.FileSystem).stat(value).pipe(Effect.option)
    return Option.isNone(info) || info.value.type === (flag._tag === "file" ? "File" : "Directory")
  })

/** The flags whose values their settings or the CLI reject, each with the error `loadWeftSettings` would give. */
export const rejectedFlags = (flags: FlagValues) =>
  Effect.forEach(settingSpecs, (setting) =>
    Effect.gen(function*() {
      const value = flags[setting.name]
      if (value === undefined) return []
      const raw = { key: `--${setting.name}`, value }
      if (!(yield* passesCliParsing(setting.flag, value))) return [invalidValue(setting, raw)]
      return Either.match(decodeSetting(setting, raw), { onLeft: (error) => [error], onRight: () => [] })
    })).pipe(Effect.map(Arr.flatten))

/** Config-file keys that hold JSON structures rather than one setting's value; they have no flag or `WEFT_*` form. */
const structuredKeys = ["models", "alerts"]

/** The config file's `alerts` object, decoded; a bad one names the part that is wrong. */
const alertsOf = (file: Readonly<Record<string, unknown>>, configPath: string | undefined) =>
  file["alerts"] === undefined
    ? Effect.succeed(undefined)
    : Schema.decodeUnknown(AlertSettings, { onExcessProperty: "error" })(file["alerts"]).pipe(
      Effect.mapError((error) => new ConfigFileInvalid({ path: configPath ?? "", reason: `"alerts": ${error.message}` }))
    )

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
    const known = new Set<string>([...settingSpecs.map((setting) => setting.name), ...structuredKeys])
    for (const key of Object.keys(parsed)) {
      if (!known.has(key)) {
        return yield* new ConfigFileInvalid({ path: file, reason: `unknown key "${key}" (keys are the flag names, e.g. "ctx-size")` })
      }
    }
    return parsed as Record<string, unknown>
  })

const checkFile = (file: string, key: string, expected: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const info = yield* fs.stat(file).pipe(Effect.option)
    if (Option.isNone(info) || info.value.type !== "File") {
      return yield* new InvalidConfigValue({ key, expected, got: describeRaw(file) })
    }
  })

const checkModelFile = (model: string, key: string) => checkFile(model, key, "a path to an existing .gguf file")

const adapterFileExpected = "a path to an existing LoRA adapter .gguf file"

/** Where a setting's value comes from: a flag, else `WEFT_*`, else the config file; `undefined` keeps the default. */
const highestPrecedence = (
  setting: AnySettingSpec,
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

  // Every value was decoded by its own grammar; a record that is not a WeftSettings is a bug in the table.
  const resolved = yield* Schema.decodeUnknown(WeftSettings)(settings).pipe(Effect.orDie)
  // Paths in a config file are relative to the file, as a reader of that file would expect.
  const resolvePath = (field: "model" | "dataDir" | "auditLog" | "plugins" | "lora", value: string) =>
    configPath !== undefined && origin[field]?.startsWith(`${configPath}:`) === true
      ? path.resolve(path.dirname(configPath), value)
      : path.resolve(value)
  const model = resolved.model === undefined ? undefined : resolvePath("model", resolved.model)
  if (model !== undefined) yield* checkModelFile(model, origin.model ?? "model")
  const auditLog = resolved.auditLog === undefined ? undefined : resolvePath("auditLog", resolved.auditLog)
  const models = configPath === undefined || file.models === undefined ? {} : yield* Either.mapLeft(
    decodeModelsConfig(file.models, path.dirname(path.resolve(configPath))),
    (reason) => new ConfigFileInvalid({ path: configPath, reason })
  )
  for (const [modelId, entry] of Object.entries(models)) {
    for (const [index, deployment] of entry.deployments.entries()) {
      const at = `${configPath}: models.${modelId}.deployments[${index}]`
      if (!isLocalDeployment(deployment)) {
        // The key itself is read when the router starts; a variable that is not set is a mistake to report now.
        if (deployment.apiKeyEnv !== undefined && Option.isNone(yield* Config.option(Config.redacted(deployment.apiKeyEnv)))) {
          return yield* new ConfigFileInvalid({
            path: configPath!,
            reason: `models.${modelId}.deployments[${index}].apiKeyEnv: the environment variable ${deployment.apiKeyEnv} is not set`
          })
        }
        continue
      }
      yield* checkModelFile(deployment.gguf, `${at}.gguf`)
      for (const [adapterIndex, adapter] of (deployment.adapters ?? []).entries()) {
        yield* checkFile(adapter.path, `${at}.adapters[${adapterIndex}].path`, adapterFileExpected)
      }
    }
  }
  const lora = resolved.lora.map((entry) => ({ ...entry, path: resolvePath("lora", entry.path) }))
  if (lora.length > 0 && model === undefined && Object.keys(models).length > 0) {
    return yield* new InvalidConfigValue({
      key: origin.lora ?? "lora",
      expected: "a --model for the adapters to apply to (a config file's models take theirs in a deployment's \"adapters\")",
      got: describeRaw(resolved.lora.map((entry) => entry.name).join(", "))
    })
  }
  for (const entry of lora) yield* checkFile(entry.path, origin.lora ?? "lora", adapterFileExpected)
  const alerts = yield* alertsOf(file, configPath)
  const plugins = resolved.plugins.map((plugin) => resolvePath("plugins", plugin))
  return { ...resolved, model, dataDir: resolvePath("dataDir", resolved.dataDir), auditLog, lora, models, alerts, plugins } satisfies WeftSettings
})
