import { ValidationError } from "@effect/cli"
import type { FileSystem } from "@effect/platform"
import { Cause, Console, Effect, Option } from "effect"
import { rejectedServeFlags } from "./ServeCommand.js"
import { cli } from "./WeftCli.js"

/**
 * Expected failures print as one line naming what is wrong. @effect/cli has already printed its own; for a mistyped
 * serve flag its line does not name the flag, so the flag's own error follows it.
 */
const report = (argv: ReadonlyArray<string>) => (cause: Cause.Cause<unknown>) => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const errors: Effect.Effect<ReadonlyArray<unknown>, never, FileSystem.FileSystem> =
      ValidationError.isValidationError(failure.value) ? rejectedServeFlags(argv) : Effect.succeed([failure.value])
    return errors.pipe(
      Effect.flatMap(Effect.forEach((error) => Console.error(`weft: ${error instanceof Error ? error.message : String(error)}`)))
    )
  }
  return Cause.isInterruptedOnly(cause) ? Effect.void : Console.error(Cause.pretty(cause))
}

/** `weft` on `argv` (the node binary and script first), printing a failure as `bin/weft` does; needs `NodeContext`. */
export const runWeft = (argv: ReadonlyArray<string>) => cli(argv).pipe(Effect.tapErrorCause(report(argv)))
