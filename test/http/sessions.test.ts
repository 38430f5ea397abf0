import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const systemPrompt = "You answer questions about the weather in a calm voice. ".repeat(8)

const clientFor = (server: TestServer) => new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })

/** One chat turn on a session; `messages` are only this turn's new messages. */
const turn = (server: TestServer, sessionId: string, messages: Array<OpenAI.ChatCompletionMessageParam>, extra: object = {}) =>
  clientFor(server).chat.completions.create(
    { model: tinyModelId, messages, max_tokens: 8, seed: 3, ...extra },
    { headers: { "x-session-id": sessionId } }
  )

interface SessionBody {
  readonly id: string
  readonly turns: number
  readonly messages: ReadonlyArray<{ readonly role: string; readonly content: string }>
}

const getSession = async (server: TestServer, id: string) => {
  const response = await fetch(`${server.url}/v1/sessions/${id}`)
  return { status: response.status, body: (await response.json()) as SessionBody }
}

describe("chat sessions", () => {
  const databasePath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "weft-http-sessions-")), "sessions.sqlite")
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 1024 }), { sessionsDatabasePath: databasePath })
  })
  afterAll(() => server.close())

  it("keeps the conversation: the next turn sends only its new message and reuses the cached prefix", async () => {
    const first = await turn(server, "weather-1", [{ role: "system", content: systemPrompt }, { role: "user", content: "Sunny today?" }])
    const second = await turn(server, "weather-1", [{ role: "user", content: "And tomorrow?" }])
    // The second prompt holds the whole history, most of it served from the prefix cache.
    expect(second.usage!.prompt_tokens).toBeGreaterThan(first.usage!.prompt_tokens)
    expect(second.usage!.prompt_tokens_details?.cached_tokens).toBeGreaterThanOrEqual(first.usage!.prompt_tokens)

    const { body, status } = await getSession(server, "weather-1")
    expect(status).toBe(200)
    expect(body.turns).toBe(2)
    expect(body.messages.map((message) => message.role)).toEqual(["system", "user", "assistant", "user", "assistant"])
    expect(body.messages[2]!.content).toBe(first.choices[0]!.message.content)
  })

  it("streams a session turn and saves it", async () => {
    const stream = await clientFor(server).chat.completions.create(
      { model: tinyModelId, messages: [{ role: "user", content: "hello" }], max_tokens: 6, stream: true },
      { headers: { "x-session-id": "streamed" } }
    )
    let text = ""
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ""
    const { body } = await getSession(server, "streamed")
    expect(body.messages).toEqual([{ role: "user", content: "hello" }, { role: "assistant", content: text }])
  })

  it("serialises concurrent turns of one session", async () => {
    await Promise.all([
      turn(server, "busy", [{ role: "user", content: "first question" }]),
      turn(server, "busy", [{ role: "user", content: "second question" }])
    ])
    const { body } = await getSession(server, "busy")
    expect(body.turns).toBe(2)
    // Each turn saw the other's completed turn or none of it: user/assistant strictly alternate.
    expect(body.messages.map((message) => message.role)).toEqual(["user", "assistant", "user", "assistant"])
  })

  it("another client's cache_salt cannot continue the session", async () => {
    await turn(server, "private", [{ role: "user", content: "mine" }], { cache_salt: "alice" })
    await expect(turn(server, "private", [{ role: "user", content: "theirs" }], { cache_salt: "mallory" })).rejects.toBeInstanceOf(
      OpenAI.NotFoundError
    )
  })

  it("DELETE removes a session; unknown ids answer 404", async () => {
    await turn(server, "doomed", [{ role: "user", content: "bye" }])
    const deleted = await fetch(`${server.url}/v1/sessions/doomed`, { method: "DELETE" })
    expect(deleted.status).toBe(200)
    expect(await deleted.json()).toEqual({ id: "doomed", object: "chat.session.deleted", deleted: true })
    expect((await getSession(server, "doomed")).status).toBe(404)
    expect((await fetch(`${server.url}/v1/sessions/doomed`, { method: "DELETE" })).status).toBe(404)
  })

  it("a session resumes after a server restart", async () => {
    await turn(server, "durable", [{ role: "system", content: systemPrompt }, { role: "user", content: "Remember this." }])
    await server.close()
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 1024 }), { sessionsDatabasePath: databasePath })
    const resumed = await turn(server, "durable", [{ role: "user", content: "What did I say?" }])
    // A fresh process has no cached KV: the whole stored history is evaluated again, not just the new message.
    expect(resumed.usage!.prompt_tokens_details?.cached_tokens ?? 0).toBe(0)
    expect(resumed.usage!.prompt_tokens).toBeGreaterThan(100)
    const { body } = await getSession(server, "durable")
    expect(body.turns).toBe(2)
    expect(body.messages[1]).toEqual({ role: "user", content: "Remember this." })
  })
})
