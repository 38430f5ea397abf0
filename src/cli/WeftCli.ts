import { Command } from "@effect/cli"
import { createRequire } from "node:module"
import { benchCommand } from "./BenchCommand.js"
import { buildNativeCommand } from "./BuildNativeCommand.js"
import { datasetCommand } from "./DatasetCommand.js"
import { trainCommand } from "./TrainCommand.js"
import { jobsCommand } from "./JobsCommand.js"
import { keysCommand } from "./KeysCommand.js"
import { tenantsCommand } from "./TenantsCommand.js"
import { modelCommand } from "./ModelCommand.js"
import { serveCommand } from "./ServeCommand.js"

// Read at run time rather than imported, so the built `dist/` finds the package's own package.json one level up too.
const { version } = createRequire(import.meta.url)("../../package.json") as { readonly version: string }

/** The `weft` command and its subcommands. */
export const weftCommand = Command.make("weft").pipe(
  Command.withDescription("Effect-native LLM server: GGUF models behind an OpenAI-compatible API"),
  Command.withSubcommands([serveCommand, modelCommand, benchCommand, keysCommand, tenantsCommand, buildNativeCommand, datasetCommand, trainCommand, jobsCommand])
)

/** Runs `weft` on `argv` (`process.argv`: the node binary and script first); needs `NodeContext`. */
export const cli = Command.run(weftCommand, { name: "weft", version })
