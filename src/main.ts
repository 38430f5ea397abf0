import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { runWeft } from "./cli/runWeft.js"

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

runWeft(process.argv).pipe(
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({ disableErrorReporting: true })
)
