import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { firstSseFrame, postJson, readAll, sseData, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

// LoRA adapters over SimBackend: an adapter context shifts the simulator's text, so which context served a request
// shows in its output; latency is real, so a stream can be held open while another adapter asks for a context.

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-adapters-"))
const adapterFile = (name: string) => {
  const file = path.join(dir, `${name}.gguf`)
  fs.writeFileSync(file, "sim adapter")
  return file
}
const declared = (names: ReadonlyArray<string>) => names.map((name) => ({ model: "sim", name, path: adapterFile(name), scale: 1 }))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

interface Completion {
  readonly model: string
  readonly choices: ReadonlyArray<{ readonly message: { readonly content: string }; readonly finish_reason: string }>
}

interface AdapterJson {
  readonly id: string
  readonly state: string
  readonly requests: number
}

const chat = (model: string, extra: Record<string, unknown> = {}) => ({
  model,
  messages: [{ role: "user", content: "tell me something" }],
  max_tokens: 12,
  seed: 5,
  ...extra
})

const textOf = async (server: TestServer, model: string) => {
  const response = await postJson(server, "/v1/chat/completions", chat(model))
  expect(response.status).toBe(200)
  const body = (await response.json()) as Completion
  expect(body.model).toBe(model)
  return body.choices[0]!.message.content
}

const adapters = async (server: TestServer) =>
  ((await (await fetch(`${server.url}/admin/adapters`)).json()) as { data: ReadonlyArray<AdapterJson> }).data

const errorCode = async (response: Response) => ((await response.json()) as { error: { code: string | null } }).error.code

describe("LoRA adapters served as model:adapter", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 2 }), {
      adapters: { adapters: declared(["a", "b"]) }
    })
  })
  afterAll(() => server?.close())

  it("lists model:adapter ids and gives base, :a and :b different text for the same prompt and seed", async () => {
    const models = (await (await fetch(`${server.url}/v1/models`)).json()) as { data: ReadonlyArray<{ id: string }> }
    expect(models.data.map((model) => model.id)).toEqual(["sim", "sim:a", "sim:b"])
    const texts = [await textOf(server, "sim"), await textOf(server, "sim:a"), await textOf(server, "sim:b")]
    expect(new Set(texts).size).toBe(3)
    expect(await textOf(server, "sim:a")).toBe(texts[1])
    expect((await fetch(`${server.url}/v1/models/sim:a`)).status).toBe(200)
  })

  it("answers 404 in OpenAI's shape for an adapter that is not declared", async () => {
    const response = await postJson(server, "/v1/chat/completions", chat("sim:nope"))
    expect(response.status).toBe(404)
    expect(await errorCode(response)).toBe("model_not_found")
  })

  it("adds and removes adapters at run time", async () => {
    const file = adapterFile("c")
    const created = await postJson(server, "/admin/adapters", { name: "c", path: file, scale: 0.5 })
    expect(created.status).toBe(201)
    expect(((await created.json()) as AdapterJson).id).toBe("sim:c")
    expect(await textOf(server, "sim:c")).not.toBe(await textOf(server, "sim"))
    expect((await postJson(server, "/admin/adapters", { name: "c", path: file })).status).toBe(409)

    const removed = await fetch(`${server.url}/admin/adapters/sim:c`, { method: "DELETE" })
    expect(removed.status).toBe(200)
    expect((await adapters(server)).map((adapter) => adapter.id)).toEqual(["sim:a", "sim:b"])
    const gone = await postJson(server, "/v1/chat/completions", chat("sim:c"))
    expect(gone.status).toBe(404)
    expect((await fetch(`${server.url}/admin/adapters/sim:c`, { method: "DELETE" })).status).toBe(404)
  })

  it("refuses bad adapter declarations with 400", async () => {
    const missing = await postJson(server, "/admin/adapters", { name: "d", path: path.join(dir, "missing.gguf") })
    expect(missing.status).toBe(400)
    expect(await errorCode(missing)).toBe("invalid_value")
    const badName = await postJson(server, "/admin/adapters", { name: "no:colons", path: adapterFile("d") })
    expect(badName.status).toBe(400)
    const badScale = await postJson(server, "/admin/adapters", { name: "d", path: adapterFile("d"), scale: "big" })
    expect(badScale.status).toBe(400)
    const unknownModel = await postJson(server, "/admin/adapters", { model: "other", name: "d", path: adapterFile("d") })
    expect(unknownModel.status).toBe(404)
    expect((await adapters(server)).map((adapter) => adapter.id)).toEqual(["sim:a", "sim:b"])
  })
})

describe("--max-adapters 1", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 5 }), {
      adapters: { maxAdapters: 1, adapters: declared(["a", "b"]) },
      scheduler: { maxQueue: 1, timeouts: { queueMs: 300 } }
    })
  })
  afterAll(() => server?.close())

  it("serves two adapters in alternation, one context at a time", async () => {
    const first = [await textOf(server, "sim:a"), await textOf(server, "sim:b")]
    for (let round = 0; round < 2; round++) {
      expect(await textOf(server, "sim:a")).toBe(first[0])
      expect((await adapters(server)).filter((adapter) => adapter.state !== "unloaded").map((adapter) => adapter.id)).toEqual(["sim:a"])
      expect(await textOf(server, "sim:b")).toBe(first[1])
      expect((await adapters(server)).filter((adapter) => adapter.state !== "unloaded").map((adapter) => adapter.id)).toEqual(["sim:b"])
    }
  })

  it("never takes the context of a running adapter: another adapter waits, times out or is refused, and the stream ends normally", async () => {
    const running = await postJson(server, "/v1/chat/completions", chat("sim:a", { stream: true, max_tokens: 150, ignore_eos: true }))
    const reader = await firstSseFrame(running)
    expect((await adapters(server)).find((adapter) => adapter.id === "sim:a")).toMatchObject({ state: "loaded", requests: 1 })

    // One waits for the context until its queue time is up; the other finds the wait queue (1) full.
    const waiting = await Promise.all([postJson(server, "/v1/chat/completions", chat("sim:b")), postJson(server, "/v1/chat/completions", chat("sim:b"))])
    const codes = await Promise.all(waiting.map(async (response) => ({ status: response.status, code: await errorCode(response) })))
    expect(codes).toContainEqual({ status: 408, code: "queue_timeout" })
    expect(codes).toContainEqual({ status: 429, code: "queue_full" })
    expect((await adapters(server)).find((adapter) => adapter.id === "sim:b")).toMatchObject({ state: "unloaded", requests: 0 })

    const frames = sseData(await readAll(reader))
    expect(frames[frames.length - 1]).toBe("[DONE]")
    const finish = frames.slice(0, -1).map((frame) => JSON.parse(frame) as { choices: ReadonlyArray<{ finish_reason: string | null }> })
      .flatMap((chunk) => chunk.choices.map((choice) => choice.finish_reason)).filter((reason) => reason !== null)
    expect(finish).toEqual(["length"])

    // Once it is idle, the other adapter takes its place.
    expect((await textOf(server, "sim:b")).length).toBeGreaterThan(0)
    expect((await adapters(server)).find((adapter) => adapter.id === "sim:a")).toMatchObject({ state: "unloaded", requests: 0 })
  })
})
