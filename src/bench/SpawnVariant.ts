import { ParseResult, Schema } from "effect"

/** A `weft serve` started for the bench with extra flags and environment variables, measured as a mode of its own. */
export interface SpawnVariant {
  /** The mode's name in the tables. */
  readonly name: string
  /** Flags added to `weft serve`'s (a later flag wins, e.g. `--binary native`). */
  readonly args: ReadonlyArray<string>
  /** Variables added to the server's environment (e.g. `UV_THREADPOOL_SIZE=1`). */
  readonly env: Readonly<Record<string, string>>
}

const environmentVariable = /^([A-Z_][A-Z0-9_]*)=(.*)$/

/**
 * `--variant "NAME: WORDS"`: each word of the form `UPPER_CASE=value` is an environment variable, every other word a
 * flag of `weft serve`; words are separated by spaces (no quoting). Example:
 * `native-uv1: --binary native --openmp-wait active UV_THREADPOOL_SIZE=1`.
 */
export const SpawnVariantFromString: Schema.Schema<SpawnVariant, string> = Schema.transformOrFail(
  Schema.String,
  Schema.Struct({ name: Schema.String, args: Schema.Array(Schema.String), env: Schema.Record({ key: Schema.String, value: Schema.String }) }),
  {
    strict: true,
    decode: (text, _, ast) => {
      const colon = text.indexOf(":")
      const name = colon === -1 ? "" : text.slice(0, colon).trim()
      if (!/^[\w.+-]+$/.test(name)) {
        return ParseResult.fail(new ParseResult.Type(ast, text, "expected NAME: FLAGS AND VARIABLES, with a name of letters, digits, . + - _"))
      }
      const args: Array<string> = []
      const env: Record<string, string> = {}
      for (const word of text.slice(colon + 1).split(/\s+/).filter((part) => part !== "")) {
        const variable = environmentVariable.exec(word)
        if (variable === null) args.push(word)
        else env[variable[1]!] = variable[2]!
      }
      return ParseResult.succeed({ name, args, env })
    },
    encode: (variant) =>
      ParseResult.succeed(`${variant.name}: ${[...variant.args, ...Object.entries(variant.env).map(([key, value]) => `${key}=${value}`)].join(" ")}`)
  }
)
