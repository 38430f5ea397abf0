import { NodeContext } from "@effect/platform-node"
import { ConfigProvider, Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { defaultSettings, loadWeftSettings } from "../../src/config/WeftConfig.js"
import type { ConfigSources } from "../../src/config/WeftConfig.js"
import { servedAdapters, servedModels } from "../../src/layers.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-config-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const load = (sources: Partial<ConfigSources>, env: Record<string, string> = {}) =>
  Effect.runPromiseExit(
    loadWeftSettings({ flags: {}, ...sources }).pipe(
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))),
      Effect.provide(NodeContext.layer)
    )
  )

const settingsOf = async (sources: Partial<ConfigSources>, env: Record<string, string> = {}) => {
  const exit = await load(sources, env)
  if (Exit.isFailure(exit)) throw new Error(`expected settings, got ${String(exit.cause)}`)
  return exit.value
}

const errorOf = async (sources: Partial<ConfigSources>, env: Record<string, string> = {}) => {
  const exit = await load(sources, env)
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const failure = exit.cause._tag === "Fail" ? exit.cause.error : undefined
  return failure?.message ?? String(exit.cause)
}

const writeJson = (name: string, value: unknown) => {
  const file = path.join(dir, name)
  fs.writeFileSync(file, JSON.stringify(value))
  return file
}

describe("WeftConfig", () => {
  it("defaults to 127.0.0.1:8080 and the demo model", async () => {
    const settings = await settingsOf({})
    expect(settings).toEqual({ ...defaultSettings, dataDir: path.resolve(".weft") })
  })

  it("reads the engine's batching settings and rejects a prefill chunk of 0", async () => {
    const settings = await settingsOf({ flags: { "prefill-chunk": "64" } }, { WEFT_FLASH_ATTENTION: "off" })
    expect(settings.prefillChunk).toBe(64)
    expect(settings.flashAttention).toBe(false)
    expect(await errorOf({ flags: { "prefill-chunk": "0" } })).toBe("--prefill-chunk: expected an integer between 1 and 1048576, got \"0\"")
  })

  it("layers config file ← env ← flags", async () => {
    const config = writeJson("layers.json", { port: 9000, parallel: 2, "ctx-size": 1024, "timeout-total": "2m" })
    const settings = await settingsOf(
      { configPath: config, flags: { parallel: "8" } },
      { WEFT_PORT: "9001", WEFT_PARALLEL: "3", WEFT_MAX_BODY: "512KiB", WEFT_TIMEOUT_QUEUE: "none" }
    )
    expect(settings.port).toBe(9001)
    expect(settings.parallel).toBe(8)
    expect(settings.ctxSize).toBe(1024)
    expect(settings.timeoutTotalMs).toBe(120_000)
    expect(settings.timeoutQueueMs).toBeUndefined()
    expect(settings.maxBodyBytes).toBe(512 * 1024)
  })

  it("reads the config file named by WEFT_CONFIG", async () => {
    const config = writeJson("env.json", { host: "0.0.0.0" })
    expect((await settingsOf({}, { WEFT_CONFIG: config })).host).toBe("0.0.0.0")
  })

  it("parses durations and sizes", async () => {
    const settings = await settingsOf({ flags: { "timeout-queue": "500ms", "timeout-first-token": "1.5", "shutdown-grace": "0", "max-body": "4mb" } })
    expect(settings.timeoutQueueMs).toBe(500)
    expect(settings.timeoutFirstTokenMs).toBe(1500)
    expect(settings.shutdownGraceMs).toBe(0)
    expect(settings.maxBodyBytes).toBe(4 * 1024 * 1024)
  })

  it("names the key of an invalid value, wherever it came from", async () => {
    expect(await errorOf({}, { WEFT_PORT: "abc" })).toBe("WEFT_PORT: expected an integer between 0 and 65535, got \"abc\"")
    expect(await errorOf({ flags: { parallel: "0" } })).toBe("--parallel: expected an integer between 1 and 256, got \"0\"")
    expect(await errorOf({ flags: { "timeout-total": "soon" } })).toContain("--timeout-total: expected a duration")
    const config = writeJson("bad.json", { "max-queue": -1 })
    expect(await errorOf({ configPath: config })).toBe(`${config}: "max-queue": expected an integer between 0 and 1000000, got -1`)
  })

  it("reads the allowed hosts and CORS origins as lists, from text or a config file's array", async () => {
    const settings = await settingsOf({ flags: { "allowed-hosts": "localhost, Weft.Internal:8080" } }, { WEFT_CORS_ORIGINS: "http://localhost:3000" })
    expect(settings.allowedHosts).toEqual(["localhost", "weft.internal:8080"])
    expect(settings.corsOrigins).toEqual(["http://localhost:3000"])
    const config = writeJson("lists.json", { "allowed-hosts": ["*"], "cors-origins": ["https://a.example", "https://b.example"] })
    expect(await settingsOf({ configPath: config })).toMatchObject({ allowedHosts: ["*"], corsOrigins: ["https://a.example", "https://b.example"] })
    expect((await settingsOf({ flags: { "cors-origins": "none" } })).corsOrigins).toEqual([])
    expect(await errorOf({ flags: { "cors-origins": "https://a.example/path" } })).toContain("--cors-origins: expected comma-separated origins")
    expect(await errorOf({ flags: { "allowed-hosts": "" } })).toContain("--allowed-hosts: expected comma-separated host names")
  })

  it("reads --openmp-wait as passive, active or a spin count, from a flag, WEFT_OPENMP_WAIT or the config file", async () => {
    expect((await settingsOf({})).openMpWait).toBeUndefined()
    expect((await settingsOf({ flags: { "openmp-wait": "passive" } })).openMpWait).toBe("passive")
    expect((await settingsOf({}, { WEFT_OPENMP_WAIT: "Active" })).openMpWait).toBe("active")
    expect((await settingsOf({ configPath: writeJson("omp.json", { "openmp-wait": 20000 }) })).openMpWait).toEqual({ spinCount: 20000 })
    expect(await errorOf({ flags: { "openmp-wait": "spin" } })).toBe("--openmp-wait: expected passive, active, or a spin count (a whole number), got \"spin\"")
  })

  it("reads --decode-path as direct, direct-async or evaluate, direct by default", async () => {
    expect((await settingsOf({})).decodePath).toBe("direct")
    expect((await settingsOf({ flags: { "decode-path": "evaluate" } })).decodePath).toBe("evaluate")
    expect((await settingsOf({ flags: { "decode-path": "direct-async" } })).decodePath).toBe("direct-async")
    expect((await settingsOf({}, { WEFT_DECODE_PATH: "Direct" })).decodePath).toBe("direct")
    expect(await errorOf({ flags: { "decode-path": "fast" } })).toBe("--decode-path: expected direct, direct-async or evaluate, got \"fast\"")
  })

  it("reads --mmap as auto, on or off, auto by default", async () => {
    expect((await settingsOf({})).mmap).toBe("auto")
    expect((await settingsOf({ flags: { mmap: "off" } })).mmap).toBe("off")
    expect((await settingsOf({}, { WEFT_MMAP: "On" })).mmap).toBe("on")
    expect((await settingsOf({ configPath: writeJson("mmap.json", { mmap: "off" }) })).mmap).toBe("off")
    expect(await errorOf({ flags: { mmap: "yes" } })).toBe("--mmap: expected auto, on or off, got \"yes\"")
  })

  it("quotes at most a short prefix of an invalid value", async () => {
    const message = await errorOf({}, { WEFT_PORT: "9".repeat(100_000) })
    expect(message.length).toBeLessThan(300)
    expect(message).toContain("…")
  })

  it("rejects unknown config keys, bad JSON and missing model files", async () => {
    expect(await errorOf({ configPath: writeJson("typo.json", { prot: 1 }) })).toContain("unknown key \"prot\"")
    const broken = path.join(dir, "broken.json")
    fs.writeFileSync(broken, "{ port: ")
    expect(await errorOf({ configPath: broken })).toContain("not valid JSON")
    expect(await errorOf({ configPath: path.join(dir, "missing.json") })).toContain("missing.json")
    expect(await errorOf({ flags: { model: path.join(dir, "nope.gguf") } })).toContain("--model: expected a path to an existing .gguf file")
  })

  it("reads alert rules and webhooks from the config file's alerts object, and names what is wrong in one", async () => {
    const settings = await settingsOf({
      configPath: writeJson("alerts.json", {
        port: 9000,
        alerts: {
          rules: [{ name: "SlowFirstToken", metric: "ttft_p95_ms", op: ">", threshold: 2000, for: "2m", severity: "critical" }],
          webhooks: ["http://127.0.0.1:9999/hook"],
          repeatInterval: "1h"
        }
      })
    })
    expect(settings.port).toBe(9000)
    expect(settings.alerts).toMatchObject({
      defaults: true,
      rules: [{ name: "SlowFirstToken", metric: "ttft_p95_ms", op: ">", threshold: 2000, for: 120_000, severity: "critical" }],
      webhooks: ["http://127.0.0.1:9999/hook"],
      repeatInterval: 3_600_000
    })
    expect((await settingsOf({})).alerts).toBeUndefined()
    const badMetric = await errorOf({ configPath: writeJson("bad-alerts.json", { alerts: { rules: [{ name: "X", metric: "cpu", op: ">", threshold: 1 }] } }) })
    expect(badMetric).toContain("\"alerts\"")
    expect(badMetric).toContain("metric")
    expect(await errorOf({ configPath: writeJson("typo-alerts.json", { alerts: { webhook: [] } }) })).toContain("webhook")
  })

  it("resolves a config file's model path relative to the file", async () => {
    fs.writeFileSync(path.join(dir, "m.gguf"), "")
    const settings = await settingsOf({ configPath: writeJson("model.json", { model: "./m.gguf" }) })
    expect(settings.model).toBe(path.join(dir, "m.gguf"))
  })

  it("reads the config file's models, resolving their files against it, and serves each local one as an engine", async () => {
    fs.writeFileSync(path.join(dir, "m.gguf"), "")
    const settings = await settingsOf({ configPath: writeJson("models.json", { models: { chat: { deployments: [{ gguf: "./m.gguf", parallel: 2 }] } } }) })
    expect(settings.models).toEqual({ chat: { deployments: [{ gguf: path.join(dir, "m.gguf"), parallel: 2 }] } })
    // A config that names its models serves those, without the demo model.
    expect(servedModels(settings).map((model) => model.id)).toEqual(["chat"])
    expect(servedModels({ ...settings, model: path.join(dir, "m.gguf"), modelId: "cli" }).map((model) => model.id)).toEqual(["cli", "chat"])
    expect(await errorOf({ configPath: writeJson("models-missing.json", { models: { chat: { deployments: [{ gguf: "./none.gguf" }] } } }) }))
      .toContain("models.chat.deployments[0].gguf: expected a path to an existing .gguf file")
    expect(await errorOf({ configPath: writeJson("models-bad.json", { models: { chat: { deployments: [{ gguf: "./m.gguf", ctxSize: 1 }] } } }) }))
      .toMatch(/models-bad\.json: models\.chat\.deployments\[0\]\.ctxSize: /)
  })

  it("serves upstream models without a GGUF or the demo model, and names an API key variable that is not set", async () => {
    const config = { models: { chat: { deployments: [{ url: "http://127.0.0.1:9/v1", model: "llama", apiKeyEnv: "CHAT_UPSTREAM_KEY" }], fallbacks: ["small"] }, small: { deployments: [{ url: "http://127.0.0.1:9/v1", model: "small" }] } } }
    const settings = await settingsOf({ configPath: writeJson("upstream.json", config) }, { CHAT_UPSTREAM_KEY: "sk-x" })
    expect(Object.keys(settings.models)).toEqual(["chat", "small"])
    expect(servedModels(settings)).toEqual([])
    expect(await errorOf({ configPath: writeJson("upstream-nokey.json", config) }))
      .toMatch(/upstream-nokey\.json: models\.chat\.deployments\[0\]\.apiKeyEnv: the environment variable CHAT_UPSTREAM_KEY is not set/)
  })

  it("reads --lora NAME=PATH[:SCALE] (repeated, or comma-separated in env) onto the --model model, and the config's adapters", async () => {
    for (const name of ["a.gguf", "b.gguf", "m.gguf"]) fs.writeFileSync(path.join(dir, name), "")
    const a = path.join(dir, "a.gguf")
    const b = path.join(dir, "b.gguf")
    // The CLI joins a repeated flag's values with newlines.
    const settings = await settingsOf({ flags: { lora: `a=${a}\nb=${b}:0.25`, "max-adapters": "1" } })
    expect(settings.lora).toEqual([{ name: "a", path: a, scale: 1 }, { name: "b", path: b, scale: 0.25 }])
    expect(servedAdapters(settings)).toEqual({
      maxAdapters: 1,
      adapters: [{ model: "weft-demo-s42", name: "a", path: a, scale: 1 }, { model: "weft-demo-s42", name: "b", path: b, scale: 0.25 }]
    })
    expect((await settingsOf({}, { WEFT_LORA: `x=${a}:-1, y=${b}` })).lora).toEqual([{ name: "x", path: a, scale: -1 }, { name: "y", path: b, scale: 1 }])
    expect(await errorOf({ flags: { lora: `a=${a}\na=${b}` } })).toContain("--lora: expected NAME=PATH")
    expect(await errorOf({ flags: { lora: `no-equals-sign` } })).toContain("--lora: expected NAME=PATH")
    expect(await errorOf({ flags: { lora: `a=${path.join(dir, "none.gguf")}` } })).toContain("--lora: expected a path to an existing LoRA adapter .gguf file")
    expect(await errorOf({ flags: { "max-adapters": "0" } })).toContain("--max-adapters: expected an integer between 1 and 1024")

    const configured = await settingsOf({
      configPath: writeJson("adapters.json", { models: { chat: { deployments: [{ gguf: "./m.gguf", adapters: [{ name: "p", path: "./a.gguf", scale: 2 }] }] } } })
    })
    expect(servedAdapters(configured).adapters).toEqual([{ model: "chat", name: "p", path: a, scale: 2 }])
    expect(await errorOf({ configPath: writeJson("adapters-missing.json", { models: { chat: { deployments: [{ gguf: "./m.gguf", adapters: [{ name: "p", path: "./none.gguf" }] }] } } }) }))
      .toContain("models.chat.deployments[0].adapters[0].path: expected a path to an existing LoRA adapter .gguf file")
    expect(await errorOf({ flags: { lora: `a=${a}` }, configPath: writeJson("adapters-cli.json", { models: { chat: { deployments: [{ gguf: "./m.gguf" }] } } }) }))
      .toContain("--lora: expected a --model for the adapters to apply to")
  })
})
