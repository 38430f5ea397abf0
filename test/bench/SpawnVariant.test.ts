import { Either, Schema } from "effect"
import { describe, expect, it } from "vitest"
import { SpawnVariantFromString } from "../../src/bench/SpawnVariant.js"

const decode = Schema.decodeEither(SpawnVariantFromString)

describe("SpawnVariant", () => {
  it("splits a variant into its name, weft serve's flags and environment variables", () => {
    expect(decode("native-uv1:  --binary native --openmp-wait active UV_THREADPOOL_SIZE=1 OMP_WAIT_POLICY=")).toEqual(
      Either.right({
        name: "native-uv1",
        args: ["--binary", "native", "--openmp-wait", "active"],
        env: { UV_THREADPOOL_SIZE: "1", OMP_WAIT_POLICY: "" }
      })
    )
    // A flag's own `=` is not a variable: only UPPER_CASE names are.
    expect(decode("p: --binary=prebuilt")).toEqual(Either.right({ name: "p", args: ["--binary=prebuilt"], env: {} }))
  })

  it("refuses a variant without a name", () => {
    expect(Either.isLeft(decode("--binary native"))).toBe(true)
    expect(Either.isLeft(decode(": --binary native"))).toBe(true)
    expect(Either.isLeft(decode("two words: --binary native"))).toBe(true)
  })
})

describe("weft bench --variant", () => {
  it("is a repeatable option of the bench command, with its help", async () => {
    // Building the command checks the option's shape (@effect/cli throws at module load on a malformed one).
    const { benchCommand } = await import("../../src/cli/BenchCommand.js")
    const { CliConfig, Command, HelpDoc } = await import("@effect/cli")
    const help = HelpDoc.toAnsiText(Command.getHelp(benchCommand, CliConfig.defaultConfig))
    expect(help).toContain("--variant text...")
    expect(help).toContain("UPPER_CASE=value words are variables")
    expect(help).toContain("--busy")
  })
})
