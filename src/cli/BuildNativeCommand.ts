import { Command, Options } from "@effect/cli"
import { Command as Process } from "@effect/platform"
import { Console, Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { findNativeBuild, loadLlamaBinary, nativeCmakeOptions, nodeLlamaCppRoot } from "../engine/llama/LlamaBinary.js"
import { ensureModel } from "../model/generateModel.js"

/** A step of the native build exited with an error. */
export class NativeBuildFailed extends Schema.TaggedError<NativeBuildFailed>()("NativeBuildFailed", {
  step: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `native build: ${this.step} failed (${this.reason})`
  }
}

const force = Options.boolean("force").pipe(Options.withDescription("Build again even when a finished native build is there"))

const nodeLlamaCppCli = (): string => path.join(nodeLlamaCppRoot(), "dist", "cli", "cli.js")

/** node-llama-cpp reads a build's custom cmake options from `NODE_LLAMA_CPP_CMAKE_OPTION_<NAME>`. */
const cmakeOptionEnv = () =>
  Object.fromEntries(Object.entries(nativeCmakeOptions()).map(([name, value]) => [`NODE_LLAMA_CPP_CMAKE_OPTION_${name}`, value]))

/** Runs node-llama-cpp's own CLI with its output on this terminal (cmake's progress). */
const runNodeLlamaCpp = (step: string, args: ReadonlyArray<string>) =>
  Process.make(process.execPath, nodeLlamaCppCli(), ...args).pipe(
    Process.env(cmakeOptionEnv()),
    Process.stdout("inherit"),
    Process.stderr("inherit"),
    Process.exitCode,
    Effect.mapError((error) => new NativeBuildFailed({ step, reason: error.message })),
    Effect.filterOrFail((code) => code === 0, (code) => new NativeBuildFailed({ step, reason: `exit code ${code}` }))
  )

/** Weft's patches to node-llama-cpp's native addon (`llama/addon`), applied in name order before `source build`. */
export const addonPatchesDirectory = (): string => fileURLToPath(new URL("../../native/node-llama-cpp", import.meta.url))

/** Weft's patches to the llama.cpp source `source download` clones (`llama/llama.cpp`), applied the same way. */
export const llamaCppPatchesDirectory = (): string => fileURLToPath(new URL("../../native/llama.cpp", import.meta.url))

/** The patches in `patchesDirectory`, in the order they apply (none when it does not exist). */
export const patchNames = (patchesDirectory: string): Array<string> =>
  fs.existsSync(patchesDirectory) ? fs.readdirSync(patchesDirectory).filter((name) => name.endsWith(".patch")).sort() : []

/**
 * Runs `git apply ARGS` on a source folder (node-llama-cpp's addon, or its llama.cpp clone, a repository of its own),
 * never on an enclosing repository; its exit code. A git that cannot be started fails the build as such, not as a
 * patch that does not apply.
 */
export const gitApply = (sourceDirectory: string, args: ReadonlyArray<string>) =>
  Process.make("git", "apply", ...args).pipe(
    Process.workingDirectory(sourceDirectory),
    // The addon folder sits inside whatever repository holds node_modules; without a ceiling git would apply the
    // patch's paths from that repository's root.
    Process.env({ GIT_CEILING_DIRECTORIES: path.dirname(sourceDirectory) }),
    Process.exitCode,
    Effect.mapError((error) => new NativeBuildFailed({ step: "patch", reason: `git apply could not run: ${error.message}` }))
  )

/**
 * Applies each patch in `patchesDirectory` to `sourceDirectory` unless it is already there (its reverse applies), so a
 * second build, or one after `--force`, finds the sources as the first one left them. A patch that neither applies nor
 * is there fails the build: it was written for another node-llama-cpp.
 */
export const applyPatches = (sourceDirectory: string, patchesDirectory: string) =>
  Effect.gen(function*() {
    const patches = patchNames(patchesDirectory)
    const applied: Array<string> = []
    for (const name of patches) {
      const file = path.join(patchesDirectory, name)
      if ((yield* gitApply(sourceDirectory, ["--reverse", "--check", file])) === 0) continue
      if ((yield* gitApply(sourceDirectory, ["--check", file])) !== 0) {
        return yield* new NativeBuildFailed({
          step: "patch",
          reason: `${name} does not apply to ${sourceDirectory} (another node-llama-cpp, or an earlier version of the patch ` +
            "applied there: `npm ci` restores the sources; then build again)"
        })
      }
      if ((yield* gitApply(sourceDirectory, [file])) !== 0) {
        return yield* new NativeBuildFailed({ step: "patch", reason: `git apply ${name} failed in ${sourceDirectory}` })
      }
      applied.push(name)
    }
    return { patches, applied }
  })

/** Loads the native build and decodes a few tokens of the tiny model with it: what "it works" means here. */
const verifyNativeBuild = (dataDir: string) =>
  Effect.scoped(Effect.gen(function*() {
    const { binary, llama } = yield* Effect.acquireRelease(
      loadLlamaBinary("native", { gpu: false, maxThreads: Math.min(2, os.availableParallelism()) }),
      ({ llama }) => Effect.promise(() => llama.dispose())
    )
    const modelPath = yield* ensureModel("tiny", dataDir)
    const generated = yield* Effect.tryPromise({
      try: async () => {
        const model = await llama.loadModel({ modelPath })
        try {
          const context = await model.createContext({ contextSize: 64, sequences: 1 })
          const tokens: Array<number> = []
          for await (const token of context.getSequence().evaluate(model.tokenize("hello"), { temperature: 0 })) {
            tokens.push(token)
            if (tokens.length === 4) break
          }
          await context.dispose()
          return tokens.length
        } finally {
          await model.dispose()
        }
      },
      catch: (error) => new NativeBuildFailed({ step: "verify", reason: error instanceof Error ? error.message : String(error) })
    })
    return { binary, generated }
  }))

/**
 * `weft build-native`: compiles the llama.cpp source node-llama-cpp ships (offline, from its git bundle) for this
 * CPU's instruction-set extensions (see `nativeCmakeOptionsFor`), with Weft's addon patches (a persistent ggml
 * threadpool; synchronous decode and sampling calls) and llama.cpp patch (large buffers on transparent huge pages),
 * through node-llama-cpp's own `source download --skipBuild` and `source build`, then checks that the result loads
 * and decodes. Idempotent: a finished build is only verified unless `--force`.
 */
export const buildNativeCommand = Command.make("build-native", { force }, (options) =>
  Effect.gen(function*() {
    const existing = findNativeBuild()
    if (existing !== undefined && !options.force) {
      yield* Console.log(`weft: a native build is already at ${existing}; verifying it (--force rebuilds)`)
    } else {
      yield* Console.log(`weft: building llama.cpp natively (${Object.entries(nativeCmakeOptions()).map(([k, v]) => `${k}=${v}`).join(" ")}); a few minutes on 2 cores`)
      yield* runNodeLlamaCpp("source download", ["source", "download", "--skipBuild", "--gpu", "false", "--noUsageExample"])
      const patched = [["addon", addonPatchesDirectory()], ["llama.cpp", llamaCppPatchesDirectory()]] as const
      for (const [folder, patchesDirectory] of patched) {
        const { applied, patches } = yield* applyPatches(path.join(nodeLlamaCppRoot(), "llama", folder), patchesDirectory)
        if (patches.length > 0) {
          yield* Console.log(`weft: ${folder} patches ${patches.join(", ")} (${applied.length === 0 ? "already applied" : `applied ${applied.join(", ")}`})`)
        }
      }
      yield* runNodeLlamaCpp("source build", ["source", "build", "--gpu", "false", "--noUsageExample"])
    }
    const folder = findNativeBuild()
    if (folder === undefined) return yield* new NativeBuildFailed({ step: "locate", reason: "node-llama-cpp left no finished build with Weft's cmake options" })
    const { binary, generated } = yield* verifyNativeBuild(path.resolve(".weft"))
    yield* Console.log(`weft: native build ok: ${folder}`)
    yield* Console.log(`  llama.cpp ${binary.release}, cmake ${Object.entries(binary.cmakeOptions).map(([k, v]) => `${k}=${v}`).join(" ")}`)
    yield* Console.log(`  verified: loaded the tiny model and decoded ${generated} tokens`)
    yield* Console.log("  weft serve uses it from now on (--binary auto); --binary prebuilt ignores it; npm ci removes it")
  })).pipe(Command.withDescription("Build llama.cpp for this CPU from the source node-llama-cpp ships (offline, opt-in; npm ci removes it)"))
