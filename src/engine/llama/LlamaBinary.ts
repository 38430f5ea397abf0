import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import type { Llama } from "node-llama-cpp"
import { errorMessage } from "./errorMessage.js"
import { nativeCmakeOptionsFor, readCpuFlags } from "./NativeCpuOptions.js"
import { applyOpenMpWait } from "./OpenMpWait.js"
import type { OpenMpWait } from "./OpenMpWait.js"

/** Which llama.cpp binary to load: `auto` is the native build when one loads, else the prebuilt one. */
export const binaryPreferences = ["auto", "native", "prebuilt"] as const
export type BinaryPreference = (typeof binaryPreferences)[number]

/** Read from `/proc/cpuinfo` once, when a native build is first looked for, not by every command that imports this. */
let thisMachine: Readonly<Record<string, string>> | undefined

/**
 * The cmake options of `weft build-native` on this machine (see `nativeCmakeOptionsFor`). node-llama-cpp names a local
 * build's folder after its custom cmake options, so asking `getLlama` for exactly these finds exactly that build, never
 * a differently configured one (an earlier Weft's OpenMP build included).
 */
export const nativeCmakeOptions = (): Readonly<Record<string, string>> =>
  (thisMachine ??= nativeCmakeOptionsFor(process.arch, readCpuFlags()))

/** A marker no local build is made with, so `getLlama` skips local builds and loads the prebuilt binary. */
const prebuiltOnlyCmakeOptions: Readonly<Record<string, string>> = { WEFT_PREBUILT_ONLY: "1" }

/** Which binary is in use, as the banner, `/health`, `/admin/stats` and `weft_build_info` report it. */
export interface LlamaBinaryInfo {
  readonly kind: "native" | "prebuilt"
  /** The llama.cpp release it was built from. */
  readonly release: string
  /** The cmake options of a native build; empty for the prebuilt one. */
  readonly cmakeOptions: Readonly<Record<string, string>>
  /** Why a native build present or asked for is not the one in use. */
  readonly fallbackReason?: string | undefined
  /** An OpenMP build's wait policy and where it came from, e.g. `OMP_WAIT_POLICY=PASSIVE (default)`; absent without OpenMP. */
  readonly openMpWait?: string | undefined
}

/** How model weights are loaded: `on` maps the file, `off` reads it into memory, `auto` decides by binary. */
export const mmapPreferences = ["auto", "on", "off"] as const
export type MmapPreference = (typeof mmapPreferences)[number]

/**
 * Whether weights are mapped from the file. `auto` reads them into memory on the native build, whose ggml puts large
 * buffers on transparent huge pages (`native/llama.cpp/0001-huge-pages-for-large-buffers.patch`): a decode reads every
 * weight, and on 4 KiB pages of a mapped file the TLB misses on each page. The prebuilt binary gains nothing from
 * reading, so it maps: lazily loaded, shared with other processes, evictable.
 */
export const mapsWeights = (preference: MmapPreference, binary: Pick<LlamaBinaryInfo, "kind">): boolean =>
  preference === "auto" ? binary.kind !== "native" : preference === "on"

/** `--binary native` was asked for, and no native build loads. */
export class NativeBinaryUnavailable extends Schema.TaggedError<NativeBinaryUnavailable>()("NativeBinaryUnavailable", {
  reason: Schema.String
}) {
  override get message(): string {
    return `no native llama.cpp build loads (${this.reason}); run \`npx weft build-native\` (or \`npm run build:native\`), or use --binary auto`
  }
}

/** The prebuilt binary did not load either. */
export class LlamaBinaryLoadFailed extends Schema.TaggedError<LlamaBinaryLoadFailed>()("LlamaBinaryLoadFailed", {
  reason: Schema.String
}) {
  override get message(): string {
    return `llama.cpp could not be loaded: ${this.reason}`
  }
}

export interface LlamaLoadOptions {
  readonly gpu: "auto" | false
  readonly maxThreads: number
  /** How a native build's OpenMP threads wait (see `OpenMpWait`); unset: the environment's variables, else Weft's default. */
  readonly openMpWait?: OpenMpWait | undefined
}

/** How one kind of binary is loaded; a seam so the selection can be tested without a native build. */
export type BinaryLoader = (kind: "native" | "prebuilt", options: LlamaLoadOptions) => Effect.Effect<Llama, string>

export const nodeLlamaCppLoader: BinaryLoader = (kind, options) =>
  Effect.tryPromise({
    // Imported here so that commands which only reach this module (`--help`, `build-native`'s checks) load no native code.
    try: async () => {
      const { getLlama, LlamaLogLevel } = await import("node-llama-cpp")
      return getLlama({
        build: "never",
        // The native build is CPU-only (`source build --gpu false`).
        gpu: kind === "native" ? false : options.gpu,
        usePrebuiltBinaries: kind === "prebuilt",
        cmakeOptions: kind === "native" ? { ...nativeCmakeOptions() } : { ...prebuiltOnlyCmakeOptions },
        maxThreads: options.maxThreads,
        logLevel: LlamaLogLevel.error,
        progressLogs: false
      })
    },
    catch: errorMessage
  }).pipe(
    Effect.filterOrFail(
      (llama) => kind === "prebuilt" || llama.buildType === "localBuild",
      () => "node-llama-cpp loaded its prebuilt binary"
    )
  )

/** Whether `llama` is a local build made with OpenMP (Weft's own builds are not; see `nativeCmakeOptionsFor`). */
const usesOpenMp = (llama: Llama): boolean => llama.buildType === "localBuild" && llama.cmakeOptions.GGML_OPENMP === "ON"

const infoOf = (llama: Llama, fallbackReason: string | undefined, openMpWait?: string): LlamaBinaryInfo => ({
  kind: llama.buildType === "localBuild" ? "native" : "prebuilt",
  release: llama.llamaCppRelease.release,
  cmakeOptions: llama.buildType === "localBuild" ? { ...llama.cmakeOptions } : {},
  fallbackReason,
  ...(usesOpenMp(llama) && openMpWait !== undefined ? { openMpWait } : {})
})

/**
 * Loads llama.cpp as `preference` says: `native` or a `NativeBinaryUnavailable` error, `prebuilt` always, `auto`
 * the native build when it loads and otherwise the prebuilt one, logging why when a native build was there.
 */
export const loadLlamaBinary = (
  preference: BinaryPreference,
  options: LlamaLoadOptions,
  loader: BinaryLoader = nodeLlamaCppLoader
): Effect.Effect<{ readonly llama: Llama; readonly binary: LlamaBinaryInfo }, NativeBinaryUnavailable | LlamaBinaryLoadFailed> =>
  Effect.gen(function*() {
    const prebuilt = (fallbackReason: string | undefined) =>
      loader("prebuilt", options).pipe(
        Effect.mapError((reason) => new LlamaBinaryLoadFailed({ reason })),
        Effect.map((llama) => ({ llama, binary: infoOf(llama, fallbackReason) }))
      )
    if (preference === "prebuilt") return yield* prebuilt(undefined)
    // Before the native library is loaded: libgomp reads its wait policy once, at load.
    const openMp = yield* Effect.sync(() => applyOpenMpWait(options.openMpWait))
    const native = yield* Effect.either(loader("native", options))
    if (native._tag === "Right") {
      if (options.openMpWait !== undefined && !usesOpenMp(native.right)) {
        yield* Effect.logWarning("--openmp-wait has no effect: this native build runs without OpenMP, on a ggml threadpool (WEFT_GGML_POLL sets how long its idle threads poll)")
      }
      return { llama: native.right, binary: infoOf(native.right, undefined, `${openMp.description} (${openMp.source})`) }
    }
    if (preference === "native") return yield* new NativeBinaryUnavailable({ reason: native.left })
    const built = yield* nativeBuildPresent
    if (built) yield* Effect.logWarning("the native llama.cpp build did not load; using the prebuilt binary").pipe(Effect.annotateLogs({ reason: native.left }))
    return yield* prebuilt(built ? native.left : undefined)
  })

/** Where node-llama-cpp is installed (its `exports` hide `package.json`, so from its entry point, `dist/index.js`). */
export const nodeLlamaCppRoot = (): string => path.dirname(path.dirname(createRequire(import.meta.url).resolve("node-llama-cpp")))

/** node-llama-cpp's folder of local builds (`npm ci` empties it). */
export const localBuildsDirectory = (): string => path.join(nodeLlamaCppRoot(), "llama", "localBuilds")

/** A finished local build made with `nativeCmakeOptions`, as node-llama-cpp lays it out; its folder, if any. */
export const findNativeBuild = (localBuilds: string = localBuildsDirectory()): string | undefined => {
  if (!fs.existsSync(localBuilds)) return undefined
  return fs.readdirSync(localBuilds).map((name) => path.join(localBuilds, name)).find((folder) => {
    const metadata = path.join(folder, "Release", "_nlcBuildMetadata.json")
    if (!fs.existsSync(path.join(folder, "buildDone.status")) || !fs.existsSync(path.join(folder, "Release", "llama-addon.node"))) return false
    try {
      const options = (JSON.parse(fs.readFileSync(metadata, "utf8")) as { buildOptions?: { customCmakeOptions?: Record<string, string> } })
        .buildOptions?.customCmakeOptions ?? {}
      return Object.entries(nativeCmakeOptions()).every(([key, value]) => options[key] === value)
    } catch {
      return false
    }
  })
}

/** Whether `weft build-native` has left a finished build behind (whether or not it loads). */
export const nativeBuildPresent: Effect.Effect<boolean> = Effect.sync(() => findNativeBuild() !== undefined)
