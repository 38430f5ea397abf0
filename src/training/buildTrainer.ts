// `npm run build:trainer`: builds the native trainer addon ahead of its first use (`.ci/run` calls it after `npm ci`).
import { Effect } from "effect"
import { buildTrainerAddon, loadTrainerAddon } from "./TrainerAddon.js"

const started = performance.now()
Effect.runPromise(buildTrainerAddon().pipe(Effect.zipLeft(loadTrainerAddon))).then(
  (file) => console.log(`${file} (${((performance.now() - started) / 1000).toFixed(1)}s)`),
  (error: unknown) => {
    console.error(`weft: ${error instanceof Error ? error.message : String(error)}`)
    process.exitCode = 1
  }
)
