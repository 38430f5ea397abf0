import * as fs from "node:fs"

/**
 * ggml's cmake switch for each x86 instruction-set extension, and the `/proc/cpuinfo` flags the CPU must report for
 * it (all of them: `GGML_AVX512` compiles with `-mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw`).
 */
const x86Extensions: ReadonlyArray<readonly [option: string, flags: ReadonlyArray<string>]> = [
  ["GGML_SSE42", ["sse4_2"]],
  ["GGML_AVX", ["avx"]],
  ["GGML_F16C", ["f16c"]],
  ["GGML_FMA", ["fma"]],
  ["GGML_AVX2", ["avx2"]],
  ["GGML_BMI2", ["bmi2"]],
  ["GGML_AVX_VNNI", ["avx_vnni"]],
  ["GGML_AVX512", ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"]],
  ["GGML_AVX512_VBMI", ["avx512vbmi"]],
  ["GGML_AVX512_VNNI", ["avx512_vnni"]],
  ["GGML_AVX512_BF16", ["avx512_bf16"]],
  ["GGML_AMX_TILE", ["amx_tile"]],
  ["GGML_AMX_INT8", ["amx_int8"]],
  ["GGML_AMX_BF16", ["amx_bf16"]]
]

/**
 * The cmake options of `weft build-native` on a CPU with `cpuFlags` (its `/proc/cpuinfo` flags; `undefined` where
 * they cannot be read).
 *
 * - Every instruction-set extension of this CPU that ggml knows is switched on by name (`GGML_NATIVE=OFF`), as ggml's
 *   own per-CPU variants are built, rather than with `-march=native`: on the 2-core Xeon (AVX-512, AMX) this was
 *   measured on, GCC 12's `-march=native` (which it resolves to `cooperlake`) gave code 15–35% slower per decode step
 *   than the same extensions named one by one (docs/performance.md, "Native build, round two"). Elsewhere (not
 *   x86-64 on Linux) `GGML_NATIVE=ON` is all there is.
 * - No OpenMP: ggml runs each decode on its own threadpool, which Weft's addon patch keeps for the context's life
 *   (`native/node-llama-cpp/`). Its barrier spins only while a graph runs and its threads sleep between decodes,
 *   where OpenMP's team either spins between decodes (collapsing on a shared machine) or sleeps at every barrier.
 * - `WEFT_NATIVE_BUILD` only marks the build as Weft's, in this configuration and with these patches (4: the
 *   threadpool, the synchronous calls and huge pages), so a build an earlier Weft made is not picked up; cmake ignores it.
 */
export const nativeCmakeOptionsFor = (
  arch: string,
  cpuFlags: ReadonlySet<string> | undefined
): Readonly<Record<string, string>> => {
  const common = { GGML_OPENMP: "OFF", WEFT_NATIVE_BUILD: "4" }
  if (arch !== "x64" || cpuFlags === undefined) return { GGML_NATIVE: "ON", ...common }
  const extensions = x86Extensions.map(([option, flags]) => [option, flags.every((flag) => cpuFlags.has(flag)) ? "ON" : "OFF"])
  return { GGML_NATIVE: "OFF", ...Object.fromEntries(extensions), ...common }
}

/** This machine's CPU flags from `/proc/cpuinfo` (its first processor), or `undefined` where there is none. */
export const readCpuFlags = (cpuinfoPath = "/proc/cpuinfo"): ReadonlySet<string> | undefined => {
  try {
    const line = fs.readFileSync(cpuinfoPath, "utf8").split("\n").find((entry) => /^flags\s*:/.test(entry))
    return line === undefined ? undefined : new Set(line.slice(line.indexOf(":") + 1).trim().split(/\s+/))
  } catch {
    return undefined
  }
}
