import { Command } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { benchCommand } from "../cli/BenchCommand.js"

// `npm run bench -- [flags]`: the same command as `weft bench`, runnable before it is wired into the main CLI.
const cli = Command.run(benchCommand, { name: "weft bench", version: "bench" })

cli(process.argv).pipe(Effect.provide(NodeContext.layer), NodeRuntime.runMain)
