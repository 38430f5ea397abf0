import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { keyStoreIn } from "../support/keys.js"
import { readAll, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const sim = () => SimBackend.layer({ parallel: 2, contextSize: 256, tokenLatency: 5 })

/** The `event:` names and parsed `data:` of an SSE text, in order. */
const events = (text: string) =>
  text.split("\n\n").filter((frame) => frame.startsWith("event: ")).map((frame) => {
    const [head, data] = frame.split("\n")
    return { name: head!.slice("event: ".length), data: JSON.parse(data!.slice("data: ".length)) as Record<string, unknown> }
  })

describe("the dashboard's routes with keys", () => {
  const keys = keyStoreIn("weft-dashboard-routes-")
  let server: TestServer
  let admin: string
  let inference: string
  beforeAll(async () => {
    admin = (await keys.create("ops", { scopes: ["admin"] })).key
    inference = (await keys.create("acme")).key
    server = await startServer(sim(), { keysDatabasePath: keys.databasePath, operations: { liveEvents: { intervalMs: 50 } } })
  })
  afterAll(async () => {
    await server?.close()
    await keys.close()
  })

  it("serves the page and its assets without a key: they hold no data", async () => {
    for (const path of ["/", "/ui"]) {
      const response = await fetch(`${server.url}${path}`)
      expect(response.status).toBe(200)
      expect(response.headers.get("content-type")).toMatch(/^text\/html/)
      expect(response.headers.get("content-security-policy")).toContain("default-src 'self'")
      expect(await response.text()).toContain("/ui/chart.umd.js")
    }
    const chart = await fetch(`${server.url}/ui/chart.umd.js`)
    expect(chart.status).toBe(200)
    expect(await chart.text()).toContain("Chart.js")
    expect((await fetch(`${server.url}/ui/dashboard.js`)).status).toBe(200)
    expect((await fetch(`${server.url}/ui/nothing.js`)).status).toBe(404)
  })

  it("streams events only to an admin key", async () => {
    expect((await fetch(`${server.url}/admin/events`)).status).toBe(401)
    const refused = await fetch(`${server.url}/admin/events`, { headers: { authorization: `Bearer ${inference}` } })
    expect(refused.status).toBe(403)
    expect(((await refused.json()) as { error: { type: string } }).error.type).toBeDefined()
    const controller = new AbortController()
    const response = await fetch(`${server.url}/admin/events`, { headers: { authorization: `Bearer ${admin}` }, signal: controller.signal })
    expect(response.status).toBe(200)
    expect(response.headers.get("content-type")).toBe("text/event-stream")
    const reader = response.body!.getReader()
    let text = ""
    while (events(text).filter((event) => event.name === "snapshot").length < 2) {
      const { done, value } = await reader.read()
      if (done) break
      text += new TextDecoder().decode(value)
    }
    controller.abort()
    const received = events(text)
    expect(received[0]!.name).toBe("history")
    const snapshot = received.find((event) => event.name === "snapshot")!.data as {
      sample: { models: Array<{ id: string; state: string; slots: Array<{ state: string }> }> }
      point: { tokensPerSecond: number }
      alerts: Array<unknown>
    }
    expect(snapshot.sample.models[0]!.state).toBe("ready")
    expect(snapshot.sample.models[0]!.slots.map((slot) => slot.state)).toEqual(["idle", "idle"])
    expect(snapshot.point.tokensPerSecond).toBe(0)
    expect(snapshot.alerts).toEqual([])
  })
})

describe("the event stream at shutdown", () => {
  it("ends once the server drains, so an open dashboard does not hold shutdown", async () => {
    const server = await startServer(sim(), { operations: { liveEvents: { intervalMs: 50 } }, shutdownGraceMs: 60_000 })
    const response = await fetch(`${server.url}/admin/events`)
    const reader = response.body!.getReader()
    await reader.read()
    const closed = server.close()
    const rest = await readAll(reader)
    await closed
    expect(events(rest).at(-1)).toMatchObject({ name: "snapshot", data: { sample: { models: [{ state: "draining" }] } } })
  })
})
