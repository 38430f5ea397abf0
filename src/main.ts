import { Command, ValidationError } from "@effect/cli"
import type { FileSystem } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Cause, Console, Effect, Option } from "effect"
import packageJson from "../package.json" with { type: "json" }
import { benchCommand } from "./cli/BenchCommand.js"
import { buildNativeCommand } from "./cli/BuildNativeCommand.js"
import { datasetCommand } from "./cli/DatasetCommand.js"
import { trainCommand } from "./cli/TrainCommand.js"
import { keysCommand } from "./cli/KeysCommand.js"
import { tenantsCommand } from "./cli/TenantsCommand.js"
import { modelCommand } from "./cli/ModelCommand.js"
import { rejectedServeFlags, serveCommand } from "./cli/ServeCommand.js"

const weft = Command.make("weft").pipe(
  Command.withDescription("Effect-native LLM server: GGUF models behind an OpenAI-compatible API"),
  Command.withSubcommands([serveCommand, modelCommand, benchCommand, keysCommand, tenantsCommand, buildNativeCommand, datasetCommand, trainCommand])
)

const cli = Command.run(weft, { name: "weft", version: packageJson.version })

/**
 * Expected failures print as one line naming what is wrong. @effect/cli has already printed its own; for a mistyped
 * serve flag its line does not name the flag, so the flag's own error follows it.
 */
const report = (cause: Cause.Cause<unknown>) => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const errors: Effect.Effect<ReadonlyArray<unknown>, never, FileSystem.FileSystem> =
      ValidationError.isValidationError(failure.value) ? rejectedServeFlags(process.argv) : Effect.succeed([failure.value])
    return errors.pipe(
      Effect.flatMap(Effect.forEach((error) => Console.error(`weft: ${error instanceof Error ? error.message : String(error)}`)))
    )
  }
  return Cause.isInterruptedOnly(cause) ? Effect.void : Console.error(Cause.pretty(cause))
}

/**
 * runMain drains on the first SIGINT/SIGTERM and then stops listening, after which Node's default would kill the
 * process mid-drain. Wrappers deliver the first Ctrl-C twice (tsx relays the terminal's SIGINT to its child again),
 * so repeats within a second are ignored; a later one forces an exit.
 */
const forceExitOnRepeatedSignal = () => {
  let firstAt: number | undefined
  const onSignal = () => {
    const now = Date.now()
    if (firstAt === undefined) firstAt = now
    else if (now - firstAt > 1000) {
      process.stderr.write("weft: forced exit\n")
      process.exit(130)
    }
  }
  process.on("SIGINT", onSignal)
  process.on("SIGTERM", onSignal)
}

forceExitOnRepeatedSignal()

cli(process.argv).pipe(
  Effect.tapErrorCause(report),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({ disableErrorReporting: true })
)
