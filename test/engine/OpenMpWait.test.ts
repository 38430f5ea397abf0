import { Effect, Logger } from "effect"
import * as fc from "effect/FastCheck"
import type { Llama } from "node-llama-cpp"
import { afterEach, describe, expect, it } from "vitest"
import { loadLlamaBinary, nativeCmakeOptions } from "../../src/engine/llama/LlamaBinary.js"
import type { BinaryLoader } from "../../src/engine/llama/LlamaBinary.js"
import { openMpEnvironment, openMpVariables } from "../../src/engine/llama/OpenMpWait.js"
import type { OpenMpWait } from "../../src/engine/llama/OpenMpWait.js"

const saved = Object.fromEntries(openMpVariables.map((name) => [name, process.env[name]]))
const restore = () => {
  for (const name of openMpVariables) {
    if (saved[name] === undefined) delete process.env[name]
    else process.env[name] = saved[name]
  }
}
afterEach(restore)

const clear = () => {
  for (const name of openMpVariables) delete process.env[name]
}

/** A local build, made with OpenMP (as Weft's were before the ggml threadpool) unless `openMp` is false, or the prebuilt binary. */
const fakeLlama = (buildType: "localBuild" | "prebuilt", openMp = true): Llama =>
  ({
    buildType,
    llamaCppRelease: { repo: "ggml-org/llama.cpp", release: "v0.5.0" },
    cmakeOptions: buildType === "localBuild" ? { ...nativeCmakeOptions(), ...(openMp ? { GGML_OPENMP: "ON" } : {}) } : {}
  }) as unknown as Llama

/** A loader whose native build loads; records the OpenMP variables each load saw. */
const recordingLoader = () => {
  const seen: Array<{ kind: string; env: Record<string, string | undefined> }> = []
  const load: BinaryLoader = (kind) =>
    Effect.sync(() => {
      seen.push({ kind, env: Object.fromEntries(openMpVariables.map((name) => [name, process.env[name]])) })
      return fakeLlama(kind === "native" ? "localBuild" : "prebuilt")
    })
  return { seen, load }
}

describe("OpenMpWait", () => {
  it("sets OMP_WAIT_POLICY=PASSIVE before the native build loads, unless the environment says otherwise", async () => {
    clear()
    const loader = recordingLoader()
    const { binary } = await Effect.runPromise(loadLlamaBinary("auto", { gpu: false, maxThreads: 2 }, loader.load))
    expect(loader.seen).toEqual([{ kind: "native", env: { OMP_WAIT_POLICY: "PASSIVE", GOMP_SPINCOUNT: undefined } }])
    expect(binary.openMpWait).toBe("OMP_WAIT_POLICY=PASSIVE (default)")

    clear()
    process.env.GOMP_SPINCOUNT = "20000"
    const userSet = recordingLoader()
    const fromEnv = await Effect.runPromise(loadLlamaBinary("native", { gpu: false, maxThreads: 2 }, userSet.load))
    expect(userSet.seen[0]!.env).toEqual({ OMP_WAIT_POLICY: undefined, GOMP_SPINCOUNT: "20000" })
    expect(fromEnv.binary.openMpWait).toBe("GOMP_SPINCOUNT=20000 (environment)")
  })

  it("a configured policy replaces the environment's variables; --binary prebuilt leaves them alone", async () => {
    clear()
    process.env.OMP_WAIT_POLICY = "ACTIVE"
    const loader = recordingLoader()
    const { binary } = await Effect.runPromise(loadLlamaBinary("auto", { gpu: false, maxThreads: 2, openMpWait: { spinCount: 5000 } }, loader.load))
    expect(loader.seen[0]!.env).toEqual({ OMP_WAIT_POLICY: undefined, GOMP_SPINCOUNT: "5000" })
    expect(binary.openMpWait).toBe("GOMP_SPINCOUNT=5000 (setting)")

    clear()
    const prebuilt = recordingLoader()
    const result = await Effect.runPromise(loadLlamaBinary("prebuilt", { gpu: false, maxThreads: 2, openMpWait: "active" }, prebuilt.load))
    expect(prebuilt.seen).toEqual([{ kind: "prebuilt", env: { OMP_WAIT_POLICY: undefined, GOMP_SPINCOUNT: undefined } }])
    expect(result.binary.openMpWait).toBeUndefined()
  })

  it("a native build without OpenMP (Weft's own) reports no wait policy, and a configured one is only warned about", async () => {
    clear()
    const warnings: Array<string> = []
    const logger = Logger.make(({ logLevel, message }) => {
      if (logLevel._tag === "Warning") warnings.push(String(message))
    })
    const threadpoolBuild: BinaryLoader = () => Effect.succeed(fakeLlama("localBuild", false))
    const { binary } = await Effect.runPromise(
      loadLlamaBinary("native", { gpu: false, maxThreads: 2, openMpWait: "active" }, threadpoolBuild).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, logger))
      )
    )
    expect(nativeCmakeOptions().GGML_OPENMP).toBe("OFF")
    expect(binary.kind).toBe("native")
    expect(binary.openMpWait).toBeUndefined()
    expect(warnings.join("\n")).toMatch(/--openmp-wait has no effect: this native build runs without OpenMP/)
    clear()
  })

  it("a setting always decides; without one, variables the user set are never changed", () => {
    const waits = fc.oneof(
      fc.constant<OpenMpWait | undefined>(undefined),
      fc.constantFrom<OpenMpWait>("passive", "active"),
      fc.nat().map((spinCount): OpenMpWait => ({ spinCount }))
    )
    const variable = fc.option(fc.constantFrom("PASSIVE", "ACTIVE", "passive", "0", "100000"), { nil: undefined })
    fc.assert(
      fc.property(waits, variable, variable, (wait, policy, spins) => {
        const env = { OMP_WAIT_POLICY: policy, GOMP_SPINCOUNT: spins }
        const { set, source, unset } = openMpEnvironment(wait, env)
        const after: Record<string, string | undefined> = { ...env, ...set }
        for (const name of unset) delete after[name]
        if (wait !== undefined) {
          expect(source).toBe("setting")
          // Exactly the setting's variable is left, whatever the environment had.
          const expected = wait === "passive"
            ? { OMP_WAIT_POLICY: "PASSIVE" }
            : wait === "active"
            ? { OMP_WAIT_POLICY: "ACTIVE" }
            : { GOMP_SPINCOUNT: String(wait.spinCount) }
          expect(Object.fromEntries(Object.entries(after).filter(([, value]) => value !== undefined))).toEqual(expected)
        } else if (policy !== undefined || spins !== undefined) {
          expect(source).toBe("environment")
          expect(after).toEqual(env)
        } else {
          expect(source).toBe("default")
          expect(after).toEqual({ OMP_WAIT_POLICY: "PASSIVE", GOMP_SPINCOUNT: undefined })
        }
      })
    )
  })
})
