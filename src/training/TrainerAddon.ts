import { execFile } from "node:child_process"
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { Effect, Schema } from "effect"
import { nodeLlamaCppRoot } from "../engine/llama/LlamaBinary.js"

/** The native trainer could not be built or loaded. */
export class TrainerUnavailable extends Schema.TaggedError<TrainerUnavailable>()("TrainerUnavailable", {
  reason: Schema.String
}) {
  override get message(): string {
    return `the native trainer is unavailable: ${this.reason}`
  }
}

/** One step's result: mean cross-entropy loss and next-token accuracy over the labels that count. */
export interface StepResult {
  readonly loss: number
  readonly accuracy: number
  /** Tokens the step computed (windows × contextLength). */
  readonly tokens: number
  /** Labels that counted: the loss, its gradient and the accuracy cover these only. */
  readonly targets: number
}

/** An opaque handle to a model loaded for training. */
export interface TrainerHandle {
  readonly _brand: "TrainerHandle"
}

/** What `native/trainer/trainer.cc` exports. */
export interface TrainerAddon {
  readonly loadBackends: (directory: string) => boolean
  /** `optimizer`: 0 AdamW, 1 SGD. Throws when llama.cpp cannot load the model. */
  readonly open: (modelPath: string, threads: number, optimizer: 0 | 1) => TrainerHandle
  readonly info: (handle: TrainerHandle) => { readonly contextLength: number; readonly vocabSize: number }
  readonly setOptimizer: (handle: TrainerHandle, learningRate: number, weightDecay: number) => void
  /**
   * `windows`: whole windows of contextLength + 1 tokens; trains on them, or only evaluates when `train` is false.
   * `targets`: contextLength flags per window, whether each label (token 1 … contextLength) counts; absent, all do.
   */
  readonly step: (handle: TrainerHandle, windows: Int32Array, train: boolean, targets?: Uint8Array) => Promise<StepResult>
  readonly save: (handle: TrainerHandle, path: string) => Promise<void>
  /** Frees the model, context and optimizer state now; throws while a step or save runs; a second close does nothing. */
  readonly close: (handle: TrainerHandle) => void
}

const repoRoot = (): string => path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

const sourceFile = (): string => path.join(repoRoot(), "native", "trainer", "trainer.cc")

/** node-llama-cpp's prebuilt llama.cpp for this platform: the libraries the addon links and loads backends from. */
export const prebuiltBinsDirectory = (): string => {
  const platform = `${process.platform}-${process.arch}`
  return path.join(path.dirname(nodeLlamaCppRoot()), "@node-llama-cpp", platform, "bins", platform)
}

/** Node's own headers, beside the running binary (where Node's installers and Debian's nodejs put them). */
const nodeHeaders = (): string => process.env.WEFT_NODE_HEADERS ?? path.resolve(path.dirname(process.execPath), "..", "include", "node")

/** Where the addon for this source, Node ABI and llama.cpp release is built. */
export const trainerAddonPath = (): string => {
  const hash = createHash("sha256")
  hash.update(fs.readFileSync(sourceFile()))
  hash.update(process.versions.modules)
  hash.update(fs.readFileSync(path.join(nodeLlamaCppRoot(), "llama", "llama.cpp.info.json")))
  return path.join(repoRoot(), "native", "trainer", "build", hash.digest("hex").slice(0, 12), "weft_trainer.node")
}

const run = (command: string, args: ReadonlyArray<string>, cwd?: string) =>
  Effect.tryPromise({
    try: () => promisify(execFile)(command, [...args], { cwd, maxBuffer: 16 * 1024 * 1024 }),
    catch: (cause) => new TrainerUnavailable({ reason: `${command} ${args.join(" ")} failed: ${(cause as { stderr?: string }).stderr || String(cause)}` })
  })

/** The llama.cpp headers of the source node-llama-cpp ships (its git bundle), checked out once. */
const llamaHeaders = Effect.fn("TrainerAddon.llamaHeaders")(function*(buildRoot: string) {
  const checkout = path.join(buildRoot, "llama.cpp")
  if (fs.existsSync(path.join(checkout, "include", "llama.h"))) return checkout
  const bundle = path.join(nodeLlamaCppRoot(), "llama", "gitRelease.bundle")
  const partial = `${checkout}.${process.pid}.partial`
  yield* Effect.sync(() => fs.rmSync(partial, { recursive: true, force: true }))
  yield* run("git", ["clone", "-q", "--no-checkout", bundle, partial])
  yield* run("git", ["-c", "advice.detachedHead=false", "checkout", "-q", "HEAD", "--", "include", "ggml/include"], partial)
  yield* Effect.sync(() => fs.renameSync(partial, checkout)).pipe(
    Effect.catchAllDefect(() => Effect.sync(() => fs.rmSync(partial, { recursive: true, force: true })))
  )
  return checkout
})

/**
 * Compiles `native/trainer/trainer.cc` (one file, a few seconds) with g++ against Node's headers and the llama.cpp
 * headers, linked to node-llama-cpp's prebuilt libllama; offline. Does nothing when this build already exists.
 */
export const buildTrainerAddon = Effect.fn("buildTrainerAddon")(function*() {
  const target = trainerAddonPath()
  if (fs.existsSync(target)) return target
  const headers = nodeHeaders()
  if (!fs.existsSync(path.join(headers, "node_api.h"))) {
    return yield* new TrainerUnavailable({ reason: `Node's headers are not at ${headers}; set WEFT_NODE_HEADERS to the folder holding node_api.h` })
  }
  const bins = prebuiltBinsDirectory()
  const libllama = fs.existsSync(bins) ? fs.readdirSync(bins).find((file) => /^libllama\..*so$/.test(file)) : undefined
  const libggml = fs.existsSync(bins) ? fs.readdirSync(bins).find((file) => /^libggml\..*so$/.test(file)) : undefined
  if (libllama === undefined || libggml === undefined) {
    return yield* new TrainerUnavailable({ reason: `no prebuilt libllama for ${process.platform}-${process.arch} in ${bins}` })
  }
  const buildRoot = path.join(repoRoot(), "native", "trainer", "build")
  yield* Effect.sync(() => fs.mkdirSync(path.dirname(target), { recursive: true }))
  const llama = yield* llamaHeaders(buildRoot)
  const partial = `${target}.${process.pid}.partial`
  yield* run("g++", [
    "-O2", "-std=c++17", "-shared", "-fPIC",
    "-I", headers, "-I", path.join(llama, "include"), "-I", path.join(llama, "ggml", "include"),
    sourceFile(), "-o", partial,
    "-L", bins, `-l:${libllama}`, "-l:libggml-base.so", `-l:${libggml}`, `-Wl,-rpath,${bins}`
  ])
  yield* Effect.sync(() => fs.renameSync(partial, target))
  return target
})

/**
 * The trainer addon, built first if needed, with llama.cpp's CPU backend registered (require caches the module and
 * the backend is registered once per process, so a second load is cheap).
 */
export const loadTrainerAddon: Effect.Effect<TrainerAddon, TrainerUnavailable> = buildTrainerAddon().pipe(
  Effect.flatMap((file) =>
    Effect.try({
      try: () => {
        const addon = createRequire(import.meta.url)(file) as TrainerAddon
        if (!addon.loadBackends(prebuiltBinsDirectory())) throw new Error("llama.cpp registered no CPU backend")
        return addon
      },
      catch: (cause) => new TrainerUnavailable({ reason: cause instanceof Error ? cause.message : String(cause) })
    })
  )
)
