import { HttpServer } from "@effect/platform"
import { Effect, Layer, Logger, LogLevel, ManagedRuntime } from "effect"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { llamaBackendLayer, schedulerLayer } from "../../src/host/LocalEngine.js"
import { serverLayer } from "../../src/layers.js"
import { ensureModel } from "../../src/model/generateModel.js"
import { tinyModelPath } from "../support/tinyModel.js"
import { firstSseFrame, postJson, readAll, sseData } from "../support/testServer.js"

const MiB = 1024 * 1024

/** A generated model behind the scheduler, CPU only, one thread: the test machine's cores are shared. */
const localEngine = (modelPath: string, modelId: string, parallel: number, contextSize: number) =>
  schedulerLayer(llamaBackendLayer({ modelPath, modelId, parallel, contextSize, threads: 1, gpu: false }))

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

let url = ""
let gammaPath = ""
let demoPath = ""
let runtime: ManagedRuntime.ManagedRuntime<unknown, unknown> | undefined

const request = { messages: [{ role: "user", content: "tell me a story" }], max_tokens: 24, seed: 5, temperature: 0.9 }
const chat = async (model: string, extra: Record<string, unknown> = {}) => {
  const response = await postJson({ url }, "/v1/chat/completions", { ...request, ...extra, model })
  return { status: response.status, body: (await response.json()) as { model: string; choices: Array<{ message: { content: string } }> } & ErrorBody }
}
const modelIds = async () => ((await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data.map((model) => model.id)

describe("several local models, loaded and unloaded at run time, within a memory budget", () => {
  beforeAll(async () => {
    const alphaPath = await tinyModelPath()
    const dir = path.dirname(alphaPath)
    const [betaPath, gamma, demo] = await Promise.all([
      Effect.runPromise(ensureModel("tiny", dir, 7)),
      Effect.runPromise(ensureModel("tiny", dir, 9)),
      Effect.runPromise(ensureModel("demo", dir))
    ])
    gammaPath = gamma
    demoPath = demo
    const layer = serverLayer(
      [
        { id: "alpha", engine: localEngine(alphaPath, "alpha", 2, 1024), loadWaitMs: 120_000 },
        { id: "beta", engine: localEngine(betaPath, "beta", 2, 256), loadWaitMs: 120_000 }
      ],
      {
        host: "127.0.0.1",
        port: 0,
        maxBodyBytes: 1 << 20,
        shutdownGraceMs: 0,
        localModel: (id, deployment) => ({
          id,
          loadWaitMs: 60_000,
          engine: localEngine(deployment.gguf, id, deployment.parallel ?? 1, deployment.ctxSize ?? 256)
        })
      },
      { databasePath: ":memory:" },
      {},
      undefined,
      undefined,
      {},
      // Room for the tiny models (4 to 10 MiB each by node-llama-cpp's estimates) and the process's own growth (RSS
      // beyond its footprint at start, which is what pressure is measured on), not for 64 × 256Ki tokens of KV cache.
      { limitBytes: 2048 * MiB }
    ).pipe(Layer.provide(Logger.minimumLogLevel(LogLevel.Error)))
    runtime = ManagedRuntime.make(layer) as ManagedRuntime.ManagedRuntime<unknown, unknown>
    const port = await runtime.runPromise(
      Effect.map(HttpServer.HttpServer, (server) => (server.address._tag === "TcpAddress" ? server.address.port : 0))
    )
    url = `http://127.0.0.1:${port}`
    // Until both models serve (a request for a loading model waits, so one answer from each is enough).
    for (const model of ["alpha", "beta"]) expect((await chat(model)).status).toBe(200)
  }, 240_000)
  afterAll(() => runtime?.dispose())

  it("lists both models and routes each request to its own weights", async () => {
    expect(await modelIds()).toEqual(["alpha", "beta"])
    const alpha = await chat("alpha")
    const beta = await chat("beta")
    expect([alpha.body.model, beta.body.model]).toEqual(["alpha", "beta"])
    expect(alpha.body.choices[0]!.message.content).not.toBe(beta.body.choices[0]!.message.content)
  })

  it("loads, uses and unloads a model over /admin/models while another model streams, without disturbing it", async () => {
    const streamed = { messages: [{ role: "user", content: "a long one" }], max_tokens: 300, ignore_eos: true, seed: 11, temperature: 0.9 }
    const response = await postJson({ url }, "/v1/chat/completions", { ...streamed, model: "alpha", stream: true })
    const reader = await firstSseFrame(response)

    const loaded = await postJson({ url }, "/admin/models", { id: "gamma", gguf: gammaPath, parallel: 1, ctxSize: 256 })
    expect(loaded.status).toBe(201)
    expect(await loaded.json()).toMatchObject({ id: "gamma", object: "model", state: "ready", parallel: 1 })
    expect(await modelIds()).toEqual(["alpha", "beta", "gamma"])
    const gamma = await chat("gamma")
    expect(gamma.status).toBe(200)
    expect(gamma.body.model).toBe("gamma")
    const memory = (await (await fetch(`${url}/admin/memory`)).json()) as { reservations: Array<{ label: string }> }
    // alpha and beta load at once, so their reservations' order is whichever reserved first.
    expect(memory.reservations.map((held) => held.label).sort()).toEqual(["model alpha", "model beta", "model gamma"])

    const again = await postJson({ url }, "/admin/models", { id: "gamma", gguf: gammaPath })
    expect(again.status).toBe(409)
    expect(((await again.json()) as ErrorBody).error.code).toBe("model_exists")

    const unloaded = await fetch(`${url}/admin/models/gamma`, { method: "DELETE" })
    expect(unloaded.status).toBe(200)
    expect(await unloaded.json()).toEqual({ id: "gamma", object: "model", deleted: true })
    expect(await modelIds()).toEqual(["alpha", "beta"])
    const gone = await chat("gamma")
    expect(gone.status).toBe(404)
    expect(gone.body.error.code).toBe("model_not_found")
    expect((await fetch(`${url}/admin/models/gamma`, { method: "DELETE" })).status).toBe(404)

    // The stream went on to its end, with the very text the same request gives alone.
    const frames = sseData(await readAll(reader)).filter((frame) => frame !== "[DONE]").map((frame) => JSON.parse(frame))
    const text = frames.map((frame) => frame.choices?.[0]?.delta?.content ?? "").join("")
    expect(frames.at(-1)?.choices?.[0]?.finish_reason ?? frames.at(-2)?.choices?.[0]?.finish_reason).toBe("length")
    const alone = await chat("alpha", streamed)
    expect(alone.body.choices[0]!.message.content.endsWith(text)).toBe(true)
  }, 240_000)

  it("refuses a run-time load that would pass --memory-limit with 507, the numbers and the ways out, and keeps serving", async () => {
    const refused = await postJson({ url }, "/admin/models", { id: "big", gguf: demoPath, parallel: 64, ctxSize: 262_144 })
    expect(refused.status).toBe(507)
    const { error } = (await refused.json()) as ErrorBody
    expect(error).toMatchObject({ type: "server_error", code: "insufficient_memory", param: null })
    expect(error.message).toContain("model big")
    expect(error.message).toContain("does not fit in memory")
    expect(error.message).toContain("of the 2.0 GiB --memory-limit is free")
    expect(error.message).toContain("a smaller --ctx-size or --parallel")
    expect(error.message).toContain("a quantized GGUF")
    expect(error.message).toContain("unloading model alpha (DELETE /admin/models/alpha")
    expect(error.message).toContain("unloading model beta")
    expect(await modelIds()).toEqual(["alpha", "beta"])
    expect((await chat("alpha")).status).toBe(200)

    const account = (await (await fetch(`${url}/admin/memory`)).json()) as {
      limitBytes: number
      committedBytes: number
      rssBytes: number
      baselineRssBytes: number
      reservations: Array<{ label: string; bytes: number; parts: Record<string, number> }>
    }
    expect(account.limitBytes).toBe(2048 * MiB)
    expect(account.reservations.map((held) => held.label).sort()).toEqual(["model alpha", "model beta"])
    expect(account.committedBytes).toBe(account.reservations.reduce((sum, held) => sum + held.bytes, 0))
    expect(account.reservations.every((held) => held.parts["weights"]! > 0 && held.parts["context"]! > 0)).toBe(true)
    // Live process figures: the RSS now and at start (not compared: test files share one process, and what earlier
    // files left for the garbage collector can make the RSS fall below its baseline).
    expect(account.rssBytes).toBeGreaterThan(0)
    expect(account.baselineRssBytes).toBeGreaterThan(0)
    const metrics = await (await fetch(`${url}/metrics`)).text()
    expect(metrics).toContain(`weft_memory_committed_bytes ${account.committedBytes}`)
    expect(metrics).toMatch(/weft_memory_reserved_bytes\{holder="model alpha",part="weights"\} \d+/)
  }, 240_000)
})
