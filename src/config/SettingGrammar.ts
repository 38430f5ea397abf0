import { ParseResult, Schema } from "effect"
import { logLevelNames } from "../observability/JsonLogger.js"
import { binaryPreferences, mmapPreferences } from "../engine/llama/LlamaBinary.js"
import type { OpenMpWait } from "../engine/llama/OpenMpWait.js"

/** A native build's OpenMP wait policy, as settings hold it (see `OpenMpWait`). */
export const OpenMpWaitSchema: Schema.Schema<OpenMpWait> = Schema.Union(
  Schema.Literal("passive", "active"),
  Schema.Struct({ spinCount: Schema.Int.pipe(Schema.nonNegative()) })
)

/** How a setting is typed on the command line, so `--help` shows its type and the CLI rejects a wrong one. */
export type FlagType =
  | { readonly _tag: "integer" }
  | { readonly _tag: "choice"; readonly choices: ReadonlyArray<string> }
  | { readonly _tag: "file" }
  | { readonly _tag: "directory" }
  | { readonly _tag: "text"; readonly pseudoName: string }
  /** A flag given once per value (`--lora a=… --lora b=…`); its values reach the grammar one per line. */
  | { readonly _tag: "repeated"; readonly pseudoName: string }

/**
 * A setting's value grammar: it decodes from text (flags, env) or from the text of a JSON scalar (config file);
 * `expected` is what errors and help say a valid value looks like.
 */
export interface SettingGrammar<A> {
  readonly schema: Schema.Schema<A, string>
  readonly expected: string
  readonly flag: FlagType
}

const MiB = 1024 * 1024

const noLimitWords = ["none", "off"]

/** Text that means "no limit" for the optional settings. */
const isNoLimit = (text: string): boolean => noLimitWords.includes(text.trim().toLowerCase())

/** An integer within bounds; errors show the same bounds. */
export const integerBetween = (min: number, max: number): SettingGrammar<number> => ({
  schema: Schema.String.pipe(
    Schema.pattern(/^[+-]?\d+$/),
    Schema.compose(Schema.NumberFromString),
    Schema.compose(Schema.Int.pipe(Schema.between(min, max)))
  ),
  expected: `an integer between ${min} and ${max}`,
  flag: { _tag: "integer" }
})

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** `500ms`, `30s`, `2m`, `1h`; a bare number is seconds; `0`, `none` and `off` mean no limit. */
const OptionalDuration = Schema.transformOrFail(Schema.String, Schema.UndefinedOr(Schema.Number), {
  strict: true,
  decode: (text, _, ast) => {
    if (isNoLimit(text)) return ParseResult.succeed(undefined)
    const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(text.trim().toLowerCase())
    if (match === null) return ParseResult.fail(new ParseResult.Type(ast, text))
    const ms = Math.round(Number(match[1]) * durationUnits[match[2] ?? "s"]!)
    return ParseResult.succeed(ms === 0 ? undefined : ms)
  },
  encode: (ms) => ParseResult.succeed(ms === undefined ? "none" : `${ms}ms`)
})

const duration = { _tag: "text", pseudoName: "DURATION" } as const

/** A duration in milliseconds; `undefined` is no limit. */
export const optionalDuration: SettingGrammar<number | undefined> = {
  schema: OptionalDuration,
  expected: "a duration like 500ms, 30s, 2m, or none",
  flag: duration
}

/** A duration that must be given (zero allowed); `examples` are what its help and errors suggest. */
export const requiredDuration = (examples: string): SettingGrammar<number> => ({
  schema: OptionalDuration.pipe(
    Schema.transform(Schema.Number, { strict: true, decode: (ms) => ms ?? 0, encode: (ms) => (ms === 0 ? undefined : ms) })
  ),
  expected: `a duration like ${examples}`,
  flag: duration
})

/** A whole number, or `none` for no limit. */
export const optionalCount = (unit: string): SettingGrammar<number | undefined> => ({
  schema: Schema.transformOrFail(Schema.String, Schema.UndefinedOr(Schema.Number), {
    strict: true,
    decode: (text, _, ast) => {
      if (isNoLimit(text)) return ParseResult.succeed(undefined)
      const trimmed = text.trim()
      return /^\d+$/.test(trimmed) ? ParseResult.succeed(Number(trimmed)) : ParseResult.fail(new ParseResult.Type(ast, text))
    },
    encode: (count) => ParseResult.succeed(count === undefined ? "none" : String(count))
  }),
  expected: `a whole number of ${unit}, or none`,
  flag: { _tag: "text", pseudoName: "COUNT" }
})

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

const size = { _tag: "text", pseudoName: "SIZE" } as const

/** A byte size of at least 1KiB. */
export const byteSize: SettingGrammar<number> = {
  schema: ByteSize,
  expected: "a size of at least 1KiB like 4MiB, 512KiB or 1048576",
  flag: size
}

/** A byte size, or `none` for no limit. */
export const optionalByteSize: SettingGrammar<number | undefined> = {
  schema: Schema.transformOrFail(Schema.String, Schema.UndefinedOr(Schema.Number), {
    strict: true,
    decode: (text, options, ast) =>
      isNoLimit(text)
        ? ParseResult.succeed(undefined)
        : ParseResult.decodeUnknown(ByteSize)(text, options).pipe(ParseResult.mapError(() => new ParseResult.Type(ast, text))),
    encode: (bytes) => ParseResult.succeed(bytes === undefined ? "none" : String(bytes))
  }),
  expected: "a size like 512MiB, or none",
  flag: size
}

/** Trimmed, non-empty text: a name, an address or a path (`flag` says which, for the CLI). */
export const nonEmptyText = (expected: string, flag: FlagType): SettingGrammar<string> => ({
  schema: Schema.String.pipe(Schema.compose(Schema.Trim), Schema.compose(Schema.NonEmptyString)),
  expected,
  flag
})

/** A Postgres connection URL (`postgres://` or `postgresql://`). */
export const postgresUrl: SettingGrammar<string> = {
  schema: Schema.String.pipe(Schema.compose(Schema.Trim), Schema.compose(Schema.String.pipe(Schema.pattern(/^postgres(ql)?:\/\/\S+$/)))),
  expected: "a postgres:// URL",
  flag: { _tag: "text", pseudoName: "URL" }
}

/**
 * One of `words`, each meaning a value of `to`. Env and config-file values are trimmed and matched case-insensitively;
 * a flag must be one of the words as listed (the CLI checks it before this grammar does).
 */
const choice = <A>(to: Schema.Schema<A>, words: ReadonlyArray<readonly [string, A]>, expected: string): SettingGrammar<A> => {
  const meaning = new Map(words)
  return {
    schema: Schema.transformOrFail(Schema.String, to, {
      strict: true,
      decode: (text, _, ast) => {
        const key = text.trim().toLowerCase()
        return meaning.has(key) ? ParseResult.succeed(meaning.get(key)!) : ParseResult.fail(new ParseResult.Type(ast, text))
      },
      encode: (value, _, ast) => {
        const word = words.find(([, meant]) => meant === value)
        return word === undefined ? ParseResult.fail(new ParseResult.Type(ast, value)) : ParseResult.succeed(word[0])
      }
    }),
    expected,
    flag: { _tag: "choice", choices: words.map(([word]) => word) }
  }
}

const sameWords = <const W extends string>(words: ReadonlyArray<W>) => words.map((word) => [word, word] as const)

/** `on`/`off` and their usual spellings. */
export const onOff: SettingGrammar<boolean> = choice(
  Schema.Boolean,
  [["on", true], ["off", false], ["true", true], ["false", false], ["yes", true], ["no", false], ["1", true], ["0", false]],
  "on or off"
)

/** GPU offloading: `auto` (or on/true) or off (false/none). */
export const gpuSetting: SettingGrammar<"auto" | false> = choice(
  Schema.Union(Schema.Literal("auto"), Schema.Literal(false)),
  [["auto", "auto"], ["on", "auto"], ["true", "auto"], ["off", false], ["false", false], ["none", false]],
  "auto or off"
)

/** A log level name. */
export const logLevelSetting = choice(Schema.Literal(...logLevelNames), sameWords(logLevelNames), `one of ${logLevelNames.join(", ")}`)

/** The log line formats. */
export const logFormats = ["json", "pretty"] as const

/** `json` or `pretty`. */
export const logFormatSetting = choice(Schema.Literal(...logFormats), sameWords(logFormats), "json or pretty")

/**
 * Comma-separated entries, each trimmed, lower-cased and matching `entry`; `*` means any. With `noneAllowed`, `none`
 * (or `off`) is the empty list.
 */
export const nameList = (
  expected: string,
  pseudoName: string,
  entry: RegExp,
  options: { readonly noneAllowed: boolean }
): SettingGrammar<ReadonlyArray<string>> => ({
  schema: Schema.transformOrFail(Schema.String, Schema.Array(Schema.String), {
    strict: true,
    decode: (text, _, ast) => {
      if (options.noneAllowed && isNoLimit(text)) return ParseResult.succeed([])
      const entries = text.split(",").map((one) => one.trim().toLowerCase()).filter((one) => one !== "")
      return entries.length > 0 && entries.every((one) => one === "*" || entry.test(one))
        ? ParseResult.succeed(entries)
        : ParseResult.fail(new ParseResult.Type(ast, text))
    },
    encode: (entries) => ParseResult.succeed(entries.length === 0 ? "none" : entries.join(","))
  }),
  expected,
  flag: { _tag: "text", pseudoName }
})

/** `--allowed-hosts`: host names or addresses, each with an optional port (ignored). */
export const hostList = nameList(
  "comma-separated host names like localhost,weft.internal, or *",
  "HOSTS",
  /^(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\]|[0-9a-f:.]*:[0-9a-f:.]*)(?::\d+)?$/,
  { noneAllowed: false }
)

/** `--cors-origins`: origins as a browser sends them (`scheme://host[:port]`, no path). */
export const originList = nameList(
  "comma-separated origins like http://localhost:3000, * or none",
  "ORIGINS",
  /^[a-z][a-z0-9+.-]*:\/\/[^/\s]+\/?$/,
  { noneAllowed: true }
)

/** `--binary`: which llama.cpp binary to load, `auto`, `native` or `prebuilt`. */
export const binarySetting = choice(Schema.Literal(...binaryPreferences), sameWords(binaryPreferences), "auto, native or prebuilt")

/** How decode steps reach llama.cpp: `direct` (Weft's own steps on the native context) or `evaluate` (node-llama-cpp's). */
export const decodePathSetting = choice(
  Schema.Literal("direct", "direct-async", "evaluate"),
  sameWords(["direct", "direct-async", "evaluate"] as const),
  "direct, direct-async or evaluate"
)

/** How model weights are loaded: `auto`, `on` (mapped from the file) or `off` (read into memory). */
export const mmapSetting = choice(Schema.Literal(...mmapPreferences), sameWords(mmapPreferences), "auto, on or off")

/** `--openmp-wait`: `passive`, `active`, or a spin count (libgomp's `GOMP_SPINCOUNT`). */
export const openMpWaitSetting: SettingGrammar<OpenMpWait | undefined> = {
  schema: Schema.transformOrFail(Schema.String, Schema.UndefinedOr(OpenMpWaitSchema), {
    strict: true,
    decode: (text, _, ast) => {
      const word = text.trim().toLowerCase()
      if (word === "passive" || word === "active") return ParseResult.succeed<OpenMpWait | undefined>(word)
      return /^\d{1,15}$/.test(word) ? ParseResult.succeed({ spinCount: Number(word) }) : ParseResult.fail(new ParseResult.Type(ast, text))
    },
    encode: (wait) => ParseResult.succeed(wait === undefined ? "" : typeof wait === "string" ? wait : String(wait.spinCount))
  }),
  expected: "passive, active, or a spin count (a whole number)",
  flag: { _tag: "text", pseudoName: "passive|active|SPINS" }
}

export const authSetting = choice(Schema.Literal("on", "off", "auto"), sameWords(["on", "off", "auto"] as const), "on, off or auto")

/** `--plugin`: module paths, from repeated flags or a comma-separated env value or config-file array. */
export const pathList: SettingGrammar<ReadonlyArray<string>> = {
  schema: Schema.transform(Schema.String, Schema.Array(Schema.String), {
    strict: true,
    decode: (text) => text.split(/[\n,]/).map((one) => one.trim()).filter((one) => one !== ""),
    encode: (paths) => paths.join(",")
  }),
  expected: "module paths (repeat the flag, or separate them with commas)",
  flag: { _tag: "repeated", pseudoName: "PATH" }
}

/** One `--lora` entry: an adapter's name, its GGUF, and the scale it is applied with. */
export interface LoraEntry {
  readonly name: string
  readonly path: string
  readonly scale: number
}

/** `NAME=PATH` or `NAME=PATH:SCALE`; the scale is what follows the last `:`, when that is a number. */
const loraEntry = (text: string): LoraEntry | undefined => {
  const match = /^([A-Za-z0-9][A-Za-z0-9._-]{0,63})=(.+)$/.exec(text.trim())
  if (match === null) return undefined
  const [, name, rest] = match as unknown as [string, string, string]
  const scaled = /^(.+):(-?\d+(?:\.\d+)?)$/.exec(rest)
  const scale = scaled === null ? 1 : Number(scaled[2])
  const file = scaled === null ? rest : scaled[1]!
  return Math.abs(scale) <= 100 ? { name, path: file, scale } : undefined
}

/** `--lora NAME=PATH[:SCALE]`, repeatable; in env and the config file, entries are separated by newlines or commas. */
export const loraList: SettingGrammar<ReadonlyArray<LoraEntry>> = {
  schema: Schema.transformOrFail(Schema.String, Schema.Array(Schema.Struct({ name: Schema.String, path: Schema.String, scale: Schema.Number })), {
    strict: true,
    decode: (text, _, ast) => {
      const entries = text.split(/[\n,]/).filter((one) => one.trim() !== "").map(loraEntry)
      const names = new Set(entries.map((entry) => entry?.name))
      return entries.every((entry) => entry !== undefined) && names.size === entries.length
        ? ParseResult.succeed(entries as ReadonlyArray<LoraEntry>)
        : ParseResult.fail(new ParseResult.Type(ast, text))
    },
    encode: (entries) => ParseResult.succeed(entries.map((entry) => `${entry.name}=${entry.path}:${entry.scale}`).join("\n"))
  }),
  expected: "NAME=PATH or NAME=PATH:SCALE with distinct names (letters, digits, . _ -) and a scale within ±100",
  flag: { _tag: "repeated", pseudoName: "NAME=PATH[:SCALE]" }
}
