import { Command, Options } from "@effect/cli"
import { Effect, Option, Record } from "effect"
import type { FlagType } from "../config/SettingGrammar.js"
import { envName, settingSpecs } from "../config/SettingSpecs.js"
import type { AnySettingSpec } from "../config/SettingSpecs.js"
import { loadWeftSettings, rejectedFlags } from "../config/WeftConfig.js"
import type { FlagValues } from "../config/WeftConfig.js"

const configOption = Options.file("config").pipe(
  Options.withDescription("JSON file of settings keyed by flag name, e.g. {\"port\": 8081, \"ctx-size\": 4096}. Env WEFT_CONFIG."),
  Options.optional
)

/** The typed option of a flag; its value goes on as text, so every source is validated by the same grammar. */
const typedOption = (name: string, flag: FlagType): Options.Options<string> => {
  switch (flag._tag) {
    case "integer":
      return Options.integer(name).pipe(Options.map(String))
    case "choice":
      return Options.choice(name, flag.choices)
    case "file":
      return Options.file(name)
    case "directory":
      return Options.directory(name)
    case "text":
    case "repeated":
      return Options.text(name).pipe(Options.withPseudoName(flag.pseudoName))
  }
}

/** A choice's help lists its values already; the other types say what a valid value looks like. */
const helpText = (setting: AnySettingSpec): string => {
  const expects = setting.flag._tag === "choice" ? "" : ` Expects ${setting.expected}.`
  return `${setting.description}.${expects} Env ${envName(setting.name)}.`
}

/** A flag that may be absent; a repeated one's values go on one per line (absent when never given). */
const optionalOption = (setting: AnySettingSpec): Options.Options<Option.Option<string>> => {
  const option = typedOption(setting.name, setting.flag).pipe(Options.withDescription(helpText(setting)))
  return setting.flag._tag === "repeated"
    ? option.pipe(Options.repeated, Options.map((values) => (values.length === 0 ? Option.none() : Option.some(values.join("\n")))))
    : Options.optional(option)
}

const settingOptions = Record.fromEntries(settingSpecs.map((setting) => [setting.name, optionalOption(setting)] as const))

/** `weft serve`: every setting from flags, `WEFT_*` env, an optional JSON config file, or defaults. */
export const serveCommand = Command.make("serve", { config: configOption, settings: Options.all(settingOptions) }, (options) =>
  Effect.gen(function*() {
    const settings = yield* loadWeftSettings({
      configPath: Option.getOrUndefined(options.config),
      flags: Record.map(options.settings, Option.getOrUndefined)
    })
    // Loaded only to serve, so `--help` and invalid settings never load the engine and node-llama-cpp.
    const { runServer } = yield* Effect.promise(() => import("./runServer.js"))
    yield* runServer(settings)
  })).pipe(Command.withDescription("Serve a GGUF model behind an OpenAI-compatible HTTP API"))

/** `--name value` and `--name=value` pairs among `args`, by name; a later one wins, as a repeated flag is rejected anyway. */
const flagsIn = (args: ReadonlyArray<string>): FlagValues =>
  Object.fromEntries(args.flatMap((arg, index) => {
    const match = /^--([a-z][a-z-]*)(?:=(.*))?$/.exec(arg)
    const value = match?.[2] ?? args[index + 1]
    return match === null || value === undefined ? [] : [[match[1]!, value] as const]
  }))

/**
 * When @effect/cli has rejected a command line, the `weft serve` settings flags in it whose values are invalid, named:
 * @effect/cli's own message for a mistyped value does not say which flag it was ("'abc' is not a integer").
 */
export const rejectedServeFlags = (argv: ReadonlyArray<string>) =>
  rejectedFlags(argv[2] === "serve" ? flagsIn(argv.slice(3)) : {})
