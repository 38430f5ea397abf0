import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

// A session belongs to the client that created it (its `cache_salt`); to anyone else it does not exist.
describe("session ownership", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 1 }))
  })
  afterAll(() => server.close())

  const secret = "The launch code is 0000-SECRET."

  const turn = (sessionId: string, content: string, salt?: string) =>
    postJson(server, "/v1/chat/completions", {
      model: "sim",
      messages: [{ role: "user", content }],
      max_tokens: 3,
      session_id: sessionId,
      ...(salt === undefined ? {} : { cache_salt: salt })
    })

  const session = async (method: "GET" | "DELETE", sessionId: string, salt?: string) => {
    const response = await fetch(`${server.url}/v1/sessions/${sessionId}`, {
      method,
      headers: salt === undefined ? {} : { "x-cache-salt": salt }
    })
    return { status: response.status, text: await response.text() }
  }

  /** What a request for a session that never existed gets, with the id swapped so bodies compare. */
  const missing = async (method: "GET" | "DELETE", asId: string) => {
    const reply = await session(method, "never-created-0")
    return { status: reply.status, text: reply.text.replaceAll("never-created-0", asId) }
  }

  const createSecretSession = async (sessionId: string) => {
    const created = await postJson(server, "/v1/chat/completions", {
      model: "sim",
      messages: [{ role: "system", content: secret }, { role: "user", content: "hi" }],
      max_tokens: 3,
      session_id: sessionId,
      cache_salt: "salt-a"
    })
    expect(created.status).toBe(200)
    await created.text()
  }

  it("reading or deleting another owner's session is a 404 identical to a missing session's, and changes nothing", async () => {
    await createSecretSession("owned-1")
    const notFound = await missing("GET", "owned-1")
    expect(notFound.status).toBe(404)
    expect(JSON.parse(notFound.text)).toMatchObject({ error: { code: "session_not_found", type: "invalid_request_error" } })

    for (const salt of [undefined, "", "salt-b", "salt-a2", "SALT-A"]) {
      const read = await session("GET", "owned-1", salt)
      expect(read).toEqual(notFound)
      expect(read.text).not.toContain("SECRET")
    }
    expect(await session("DELETE", "owned-1")).toEqual(await missing("DELETE", "owned-1"))
    expect(await session("DELETE", "owned-1", "salt-b")).toEqual(await missing("DELETE", "owned-1"))

    // Still there for its owner, history intact.
    const owner = await session("GET", "owned-1", "salt-a")
    expect(owner.status).toBe(200)
    const body = JSON.parse(owner.text) as { turns: number; messages: Array<{ role: string; content: string }> }
    expect(body.turns).toBe(1)
    expect(body.messages.slice(0, 2)).toEqual([{ role: "system", content: secret }, { role: "user", content: "hi" }])
  })

  it("after a foreign DELETE the owner's next turn continues the stored history", async () => {
    await createSecretSession("owned-2")
    expect((await session("DELETE", "owned-2")).status).toBe(404)
    const next = await turn("owned-2", "still there?", "salt-a")
    expect(next.status).toBe(200)
    await next.text()
    const body = JSON.parse((await session("GET", "owned-2", "salt-a")).text) as { turns: number; messages: Array<{ role: string }> }
    expect(body.turns).toBe(2)
    expect(body.messages.map((message) => message.role)).toEqual(["system", "user", "assistant", "user", "assistant"])
  })

  it("a chat turn under another salt cannot continue the session and leaves it untouched", async () => {
    await createSecretSession("owned-3")
    const foreign = await turn("owned-3", "let me in", "salt-b")
    expect(foreign.status).toBe(404)
    expect(await foreign.text()).toEqual((await missing("GET", "owned-3")).text)
    const unsalted = await turn("owned-3", "let me in")
    expect(unsalted.status).toBe(404)
    await unsalted.text()
    expect(JSON.parse((await session("GET", "owned-3", "salt-a")).text)).toMatchObject({ turns: 1 })
  })

  it("the owner deletes the session; then it is gone for everyone", async () => {
    await createSecretSession("owned-4")
    const deleted = await session("DELETE", "owned-4", "salt-a")
    expect(deleted.status).toBe(200)
    expect(JSON.parse(deleted.text)).toEqual({ id: "owned-4", object: "chat.session.deleted", deleted: true })
    expect(await session("GET", "owned-4", "salt-a")).toEqual(await missing("GET", "owned-4"))
    expect(await session("DELETE", "owned-4", "salt-a")).toEqual(await missing("DELETE", "owned-4"))
  })

  it("an unsalted session is the unsalted client's: salted requests do not see it", async () => {
    const created = await turn("plain-1", "hello")
    expect(created.status).toBe(200)
    await created.text()
    expect((await session("GET", "plain-1", "salt-a")).status).toBe(404)
    expect((await session("GET", "plain-1")).status).toBe(200)
  })
})
