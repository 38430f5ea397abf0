// Prints `weft serve --help` from the serve command alone, without the other commands' imports.
import { Command } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { serveCommand } from "../../src/cli/ServeCommand.js"

Command.run(serveCommand, { name: "weft", version: "test" })(["node", "weft", "--help"]).pipe(
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain
)
