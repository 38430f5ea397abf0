import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

/** RSS as the server will see it: the test raises it to put the server under pressure. */
let rss = 500
let server: TestServer

const chat = () =>
  postJson(server, "/v1/chat/completions", { model: "sim", messages: [{ role: "user", content: "hello there" }], max_tokens: 4 })

const cachedTokens = () => Effect.runPromise(Effect.map(server.engine.scheduler.stats, (stats) => stats.slots.cachedTokens))

describe("memory pressure over HTTP", () => {
  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ id: "sim", parallel: 2, contextSize: 4096, tokenLatency: 1 }), {
      memory: { limitBytes: 1000, lowWatermark: 0.9, measureRss: () => rss, baselineBytes: 0 }
    })
  })
  afterAll(() => server.close())

  it("evicts cached prefixes first, then answers 503 with Retry-After until RSS falls below the low watermark", async () => {
    expect((await chat()).status).toBe(200)
    expect(await cachedTokens()).toBeGreaterThan(0)

    rss = 1200
    const refused = await chat()
    expect(refused.status).toBe(503)
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0)
    const body = (await refused.json()) as { error: { code: string; type: string; message: string; param: null } }
    expect(body.error).toMatchObject({ code: "memory_pressure", type: "server_error", param: null })
    expect(body.error.message).toContain("short of memory")
    expect(await cachedTokens()).toBe(0)

    // Below the limit but above the low watermark (900): still refused.
    rss = 950
    expect((await chat()).status).toBe(503)
    const account = await (await fetch(`${server.url}/admin/memory`)).json()
    expect(account).toMatchObject({ limitBytes: 1000, lowWatermarkBytes: 900, usedBytes: 950, underPressure: true })
    const metrics = await (await fetch(`${server.url}/metrics`)).text()
    expect(metrics).toContain("weft_memory_under_pressure 1")
    expect(metrics).toContain("weft_memory_limit_bytes 1000")

    rss = 850
    expect((await chat()).status).toBe(200)
    expect(((await (await fetch(`${server.url}/admin/memory`)).json()) as { underPressure: boolean }).underPressure).toBe(false)
  })
})
