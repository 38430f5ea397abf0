import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import { afterAll, describe, expect, it } from "vitest"
import { tinyModelPath } from "./support/tinyModel.js"

const root = path.resolve(import.meta.dirname, "..")
const execFileAsync = promisify(execFile)

/** Runs a command, failing with what it printed (tsc reports its errors on stdout). */
const run = (file: string, args: ReadonlyArray<string>, options: { readonly cwd: string; readonly env?: NodeJS.ProcessEnv }) =>
  execFileAsync(file, args, options).catch((error: { stdout?: string; stderr?: string; message: string }) => {
    throw new Error(`${error.message}\n${error.stdout ?? ""}\n${error.stderr ?? ""}`)
  })
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "weft-consumer-"))

/** The consumer's whole program: five lines against the installed package, on a local model, without HTTP. */
const program = `import { LanguageModel } from "@effect/ai"
import { Effect, Layer } from "effect"
import { localModelLayer, WeftLanguageModel } from "weft/ai"
const model = WeftLanguageModel.layer({ model: "tiny", config: { max_tokens: 8, seed: 1 } }).pipe(Layer.provide(localModelLayer({ model: process.env["WEFT_MODEL"], modelId: "tiny", parallel: 1, ctxSize: 512, logLevel: "error" })))
LanguageModel.generateText({ prompt: "Hi" }).pipe(Effect.provide(model), Effect.runPromise).then((response) => console.log(\`consumer: \${response.finishReason} after \${response.usage.outputTokens} tokens\`))
`

/** Every entry point's types, checked without running them. */
const entries = `import type * as Weft from "weft"
import type { WeftEmbeddingModel } from "weft/ai"
import type { WeftHttpServer, serverLayer } from "weft/server"
import type { weftCommand } from "weft/cli"
export type Entries = [typeof Weft.WeftLanguageModel.layer, typeof WeftEmbeddingModel.layer, typeof WeftHttpServer.app, typeof serverLayer, typeof weftCommand]
`

const tsconfig = {
  compilerOptions: {
    target: "ES2022",
    module: "NodeNext",
    moduleResolution: "NodeNext",
    strict: true,
    skipLibCheck: true,
    types: ["node"],
    outDir: "out"
  },
  include: ["*.ts"]
}

/**
 * The consumer gets Weft's dependencies as links to this repository's `node_modules`, as if already installed (the
 * sandbox has no registry for node-llama-cpp's binaries); Weft itself is installed by npm from the packed tarball.
 */
const linkDependencies = (consumer: string, names: ReadonlyArray<string>) => {
  for (const name of names) {
    const link = path.join(consumer, "node_modules", name)
    fs.mkdirSync(path.dirname(link), { recursive: true })
    fs.symlinkSync(fs.realpathSync(path.join(root, "node_modules", name)), link)
  }
}

describe("Weft as a dependency", () => {
  afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }))

  it("packs, installs from the tarball into a scratch project, type-checks and runs a five-line program there", async () => {
    await run("npm", ["run", "-s", "build"], { cwd: root })
    const { stdout: packed } = await run("npm", ["pack", "--ignore-scripts", "--pack-destination", scratch, "--json"], { cwd: root })
    const tarball = path.join(scratch, (JSON.parse(packed) as Array<{ filename: string }>)[0]!.filename)
    const consumer = path.join(scratch, "consumer")
    fs.mkdirSync(consumer)
    fs.writeFileSync(path.join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }))
    fs.writeFileSync(path.join(consumer, "tsconfig.json"), JSON.stringify(tsconfig))
    fs.writeFileSync(path.join(consumer, "main.ts"), program)
    fs.writeFileSync(path.join(consumer, "entries.ts"), entries)
    const manifest = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as { dependencies: Record<string, string> }
    linkDependencies(consumer, Object.keys(manifest.dependencies))

    await run("npm", ["install", tarball, "--offline", "--ignore-scripts", "--no-audit", "--no-fund", "--no-package-lock"], { cwd: consumer })
    const installed = path.join(consumer, "node_modules", "weft")
    expect(fs.lstatSync(installed).isSymbolicLink()).toBe(false)
    expect(fs.existsSync(path.join(installed, "dist", "ai", "index.d.ts"))).toBe(true)
    expect(JSON.parse(fs.readFileSync(path.join(consumer, "package.json"), "utf8")).dependencies.weft).toMatch(/^file:.*\.tgz$/)

    // The consumer's own dev dependency, linked after the install, which prunes what no package.json asks for.
    linkDependencies(consumer, ["@types/node"])
    await run(process.execPath, [path.join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "."], { cwd: consumer })
    const { stdout } = await run(process.execPath, ["out/main.js"], { cwd: consumer, env: { ...process.env, WEFT_MODEL: await tinyModelPath() } })
    expect(stdout).toContain("consumer: length after 8 tokens")
  }, 180_000)
})
