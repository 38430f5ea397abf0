#!/usr/bin/env node
// Runs the TypeScript entry through tsx so `weft` works without a build step.
import { spawnSync } from "node:child_process"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const require = createRequire(import.meta.url)
const tsxCli = join(dirname(require.resolve("tsx/package.json")), "dist", "cli.mjs")
const entry = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "main.ts")
// The child gets the terminal's signals itself; the wrapper stays alive until weft has drained and exited.
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => {})
const result = spawnSync(process.execPath, [tsxCli, entry, ...process.argv.slice(2)], { stdio: "inherit" })
process.exit(result.status ?? 1)
