import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { tinyModelPath } from "../support/tinyModel.js"
import { runWeftInProcess, spawnWeft } from "../support/weftCli.js"
import type { WeftRun } from "../support/weftCli.js"

const plainRun = (run: WeftRun): WeftRun => {
  const plain = (text: string) => text.replace(/\x1b\[[0-9;]*m/g, "")
  return { code: run.code, stdout: plain(run.stdout), stderr: plain(run.stderr) }
}

/** `weft serve ARGS` in this process: these tests are about what the command says and does, not about the process. */
const serve = async (args: ReadonlyArray<string>) => plainRun(await runWeftInProcess(["serve", ...args]))

/** One option's block of `--help` text: its heading up to the next option's. */
const optionHelp = (help: string, heading: string): string => {
  const start = help.indexOf(`\n${heading}\n`)
  expect(start, `no "${heading}" in the help`).toBeGreaterThanOrEqual(0)
  const next = help.indexOf("\n--", start + heading.length + 2)
  return help.slice(start, next === -1 ? undefined : next)
}

describe("weft serve", () => {
  it("--help shows each option's type, its range or choices, and its WEFT_* variable", async () => {
    const { code, stdout } = await serve(["--help"])
    expect(code).toBe(0)
    const port = optionHelp(stdout, "--port integer")
    expect(port).toContain("An integer.")
    expect(port).toContain("Expects an integer between 0 and 65535. Env WEFT_PORT.")
    expect(port).not.toContain("A user-defined piece of text.")
    expect(optionHelp(stdout, "--log-format json | pretty")).toContain("One of the following: json, pretty")
    expect(optionHelp(stdout, "--model file")).toContain("A file.")
    expect(optionHelp(stdout, "--data-dir directory")).toContain("A directory.")
    expect(optionHelp(stdout, "--timeout-queue DURATION")).toContain("Expects a duration like 500ms, 30s, 2m, or none.")
    expect(optionHelp(stdout, "--max-body SIZE")).toContain("Expects a size of at least 1KiB")
  })

  it("names the flag whose value does not have its type", async () => {
    const port = await serve(["--port", "abc"])
    expect(port.code).toBe(1)
    expect(port.stderr).toContain("weft: --port: expected an integer between 0 and 65535, got \"abc\"")
    const format = await serve(["--log-format=xml"])
    expect(format.code).toBe(1)
    expect(format.stderr).toContain("weft: --log-format: expected json or pretty, got \"xml\"")
    const dataDir = await serve(["--data-dir", "package.json"])
    expect(dataDir.code).toBe(1)
    expect(dataDir.stderr).toContain("weft: --data-dir: expected a directory path, got \"package.json\"")
  })

  it("takes --plugin more than once, and does not start when a plugin cannot be loaded", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-plugin-flag-"))
    const { code, stderr } = await serve([
      "--port", "0", "--data-dir", dataDir,
      "--plugin", "examples/plugins/input-guard.mjs", "--plugin", "examples/plugins/missing.mjs"
    ])
    expect(code).toBe(1)
    expect(stderr).toContain(`weft: plugin ${path.resolve("examples/plugins/missing.mjs")}:`)
  })

  it("shows its help without loading node-llama-cpp", async () => {
    const { code, stdout, stderr } = plainRun(await spawnWeft(["serve", "--help"], ["./test/support/noNodeLlamaCpp.mjs"]))
    expect(stderr).not.toContain("node-llama-cpp")
    expect(code).toBe(0)
    expect(stdout).toContain("--port integer")
  })

  it("stops at start-up when the model does not fit --memory-limit, giving the numbers and the ways out", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-memory-"))
    const { code, stderr } = await serve([
      "--model", await tinyModelPath(), "--memory-limit", "1MiB", "--port", "0", "--data-dir", dataDir, "--log-level", "fatal"
    ])
    expect(code).toBe(1)
    expect(stderr).toMatch(/weft: model weft-tiny-s42 \(.*\) does not fit in memory: it needs \d+\.\d MiB \(weights \d+\.\d KiB \+ KV cache and compute buffers/)
    expect(stderr).toContain("but only 1.0 MiB of the 1.0 MiB --memory-limit is free (0 B committed)")
    expect(stderr).toContain("a smaller --ctx-size or --parallel (the KV cache and compute buffers")
    expect(stderr).toContain("for 4 × 2048 tokens")
    expect(stderr).toContain("a quantized GGUF of this model")
    expect(stderr).toContain("a larger --memory-limit (now 1.0 MiB)")
    expect(stderr).not.toMatch(/Segmentation|Abort|core dumped/i)
  }, 240_000)
})
