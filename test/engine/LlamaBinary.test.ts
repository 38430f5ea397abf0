import { Effect, Either } from "effect"
import type { Llama } from "node-llama-cpp"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { findNativeBuild, loadLlamaBinary, mapsWeights, nativeCmakeOptions } from "../../src/engine/llama/LlamaBinary.js"
import type { BinaryLoader } from "../../src/engine/llama/LlamaBinary.js"
import { nativeCmakeOptionsFor, readCpuFlags } from "../../src/engine/llama/NativeCpuOptions.js"

const fakeLlama = (buildType: "localBuild" | "prebuilt"): Llama =>
  ({ buildType, llamaCppRelease: { repo: "ggml-org/llama.cpp", release: "v0.5.0" }, cmakeOptions: buildType === "localBuild" ? nativeCmakeOptions() : {} }) as unknown as Llama

/** A loader whose native build loads, fails to load, or is missing; records what was tried. */
const loader = (native: "loads" | "fails") => {
  const tried: Array<string> = []
  const load: BinaryLoader = (kind) => {
    tried.push(kind)
    if (kind === "prebuilt") return Effect.succeed(fakeLlama("prebuilt"))
    return native === "loads" ? Effect.succeed(fakeLlama("localBuild")) : Effect.fail("no local build")
  }
  return { tried, load }
}

const options = { gpu: false, maxThreads: 2 } as const

describe("LlamaBinary", () => {
  it("--mmap auto reads the weights into memory on the native build and maps them on the prebuilt one; on and off are kept", () => {
    expect(mapsWeights("auto", { kind: "native" })).toBe(false)
    expect(mapsWeights("auto", { kind: "prebuilt" })).toBe(true)
    for (const kind of ["native", "prebuilt"] as const) {
      expect(mapsWeights("on", { kind })).toBe(true)
      expect(mapsWeights("off", { kind })).toBe(false)
    }
  })

  it("auto takes the native build when it loads, and the prebuilt one otherwise", async () => {
    const withNative = loader("loads")
    const native = await Effect.runPromise(loadLlamaBinary("auto", options, withNative.load))
    expect(native.binary).toEqual({
      kind: "native",
      release: "v0.5.0",
      cmakeOptions: nativeCmakeOptions(),
      fallbackReason: undefined
    })
    expect(withNative.tried).toEqual(["native"])

    const without = loader("fails")
    const prebuilt = await Effect.runPromise(loadLlamaBinary("auto", options, without.load))
    expect(prebuilt.binary.kind).toBe("prebuilt")
    expect(prebuilt.binary.cmakeOptions).toEqual({})
    expect(without.tried).toEqual(["native", "prebuilt"])
  })

  it("native without a loadable build fails with the command that makes one; prebuilt never looks for it", async () => {
    const failed = await Effect.runPromise(Effect.either(loadLlamaBinary("native", options, loader("fails").load)))
    expect(Either.isLeft(failed) && failed.left.message).toMatch(/no native llama\.cpp build loads \(no local build\); run `npx weft build-native`/)

    const prebuiltOnly = loader("loads")
    const prebuilt = await Effect.runPromise(loadLlamaBinary("prebuilt", options, prebuiltOnly.load))
    expect(prebuilt.binary.kind).toBe("prebuilt")
    expect(prebuiltOnly.tried).toEqual(["prebuilt"])
  })

  it("finds only a finished build made with Weft's cmake options", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-local-builds-"))
    try {
      const build = (name: string, customCmakeOptions: Record<string, string>, done: boolean) => {
        const release = path.join(dir, name, "Release")
        fs.mkdirSync(release, { recursive: true })
        fs.writeFileSync(path.join(release, "llama-addon.node"), "")
        fs.writeFileSync(path.join(release, "_nlcBuildMetadata.json"), JSON.stringify({ buildOptions: { customCmakeOptions } }))
        if (done) fs.writeFileSync(path.join(dir, name, "buildDone.status"), "")
      }
      expect(findNativeBuild(path.join(dir, "missing"))).toBeUndefined()
      build("linux-x64", {}, true)
      build("linux-x64-unfinished", nativeCmakeOptions(), false)
      expect(findNativeBuild(dir)).toBeUndefined()
      build("linux-x64-abc123", nativeCmakeOptions(), true)
      expect(findNativeBuild(dir)).toBe(path.join(dir, "linux-x64-abc123"))
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe("nativeCmakeOptionsFor", () => {
  const sapphireRapids = new Set(
    "fpu sse4_2 avx f16c fma avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni avx512_bf16 avx512vbmi avx512_vnni amx_bf16 amx_tile amx_int8"
      .split(" ")
  )

  it("names every extension the CPU has, without -march=native or OpenMP", () => {
    expect(nativeCmakeOptionsFor("x64", sapphireRapids)).toEqual({
      GGML_NATIVE: "OFF",
      GGML_SSE42: "ON",
      GGML_AVX: "ON",
      GGML_F16C: "ON",
      GGML_FMA: "ON",
      GGML_AVX2: "ON",
      GGML_BMI2: "ON",
      GGML_AVX_VNNI: "ON",
      GGML_AVX512: "ON",
      GGML_AVX512_VBMI: "ON",
      GGML_AVX512_VNNI: "ON",
      GGML_AVX512_BF16: "ON",
      GGML_AMX_TILE: "ON",
      GGML_AMX_INT8: "ON",
      GGML_AMX_BF16: "ON",
      GGML_OPENMP: "OFF",
      WEFT_NATIVE_BUILD: "4"
    })
  })

  it("switches an extension off when any flag it compiles with is missing", () => {
    const partialAvx512 = new Set([...sapphireRapids].filter((flag) => flag !== "avx512vl" && !flag.startsWith("amx")))
    const options = nativeCmakeOptionsFor("x64", partialAvx512)
    expect(options.GGML_AVX512).toBe("OFF")
    expect(options.GGML_AVX2).toBe("ON")
    expect([options.GGML_AMX_TILE, options.GGML_AMX_INT8, options.GGML_AMX_BF16]).toEqual(["OFF", "OFF", "OFF"])
  })

  it("leaves the CPU to -march=native where its flags cannot be read or it is not x86-64", () => {
    const fallback = { GGML_NATIVE: "ON", GGML_OPENMP: "OFF", WEFT_NATIVE_BUILD: "4" }
    expect(nativeCmakeOptionsFor("arm64", sapphireRapids)).toEqual(fallback)
    expect(nativeCmakeOptionsFor("x64", undefined)).toEqual(fallback)
  })

  it("reads the flags of /proc/cpuinfo's first processor, and nothing from a file that has none", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-cpuinfo-"))
    const cpuinfo = path.join(dir, "cpuinfo")
    fs.writeFileSync(cpuinfo, "processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    expect(readCpuFlags(cpuinfo)).toEqual(new Set(["fpu", "avx2", "fma"]))
    fs.writeFileSync(cpuinfo, "processor\t: 0\n")
    expect(readCpuFlags(cpuinfo)).toBeUndefined()
    expect(readCpuFlags(path.join(dir, "missing"))).toBeUndefined()
  })
})
