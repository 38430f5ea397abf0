import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import OpenAI from "openai"
import { afterAll, describe, expect, it } from "vitest"
import { JsonLogger } from "../../src/observability/JsonLogger.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

// Session KV saved under the data dir when a turn ends, restored by the next turn after a restart.

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-session-kv-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
const databasePath = path.join(dir, "sessions.sqlite")
const kvDir = path.join(dir, "session-kv")
const systemPrompt = "You answer questions about the weather in a calm voice. ".repeat(8)

const logLines: Array<string> = []

const start = (maxBytes = 64 * 1024 * 1024) =>
  startServer(tinyBackend({ parallel: 2, contextSize: 1024 }), {
    sessionsDatabasePath: databasePath,
    sessionKv: { dir: kvDir, maxBytes },
    observability: JsonLogger.layer({ level: "warn", format: "json", write: (line) => logLines.push(line) })
  })

const turn = (server: TestServer, sessionId: string, messages: Array<OpenAI.ChatCompletionMessageParam>) =>
  new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 }).chat.completions.create(
    { model: tinyModelId, messages, max_tokens: 8, seed: 3 },
    { headers: { "x-session-id": sessionId } }
  )

describe("session KV on disk", () => {
  it("restores a session after a restart: only the new turn's tokens are evaluated", async () => {
    let server = await start()
    try {
      const first = await turn(server, "durable", [{ role: "system", content: systemPrompt }, { role: "user", content: "Remember this." }])
      expect(fs.existsSync(path.join(kvDir, "durable.kv"))).toBe(true)
      await server.close()
      server = await start()
      const resumed = await turn(server, "durable", [{ role: "user", content: "What did I say?" }])
      const cached = resumed.usage!.prompt_tokens_details?.cached_tokens ?? 0
      // The whole first turn (its prompt and at least the start of its reply) comes from disk.
      expect(cached).toBeGreaterThanOrEqual(first.usage!.prompt_tokens)
      const evaluated = resumed.usage!.prompt_tokens - cached
      expect(evaluated).toBeLessThan(resumed.usage!.prompt_tokens - first.usage!.prompt_tokens)

      // Deleting the session deletes its files.
      expect((await fetch(`${server.url}/v1/sessions/durable`, { method: "DELETE" })).status).toBe(200)
      expect(fs.existsSync(path.join(kvDir, "durable.kv"))).toBe(false)
      expect(fs.existsSync(path.join(kvDir, "durable.kv.json"))).toBe(false)
    } finally {
      await server.close()
    }
  }, 180_000)

  it("re-evaluates the history, with a log line, when the saved file is corrupt or from another model", async () => {
    let server = await start()
    try {
      await turn(server, "corrupt", [{ role: "system", content: `First. ${systemPrompt}` }, { role: "user", content: "One." }])
      await turn(server, "foreign", [{ role: "system", content: `Second. ${systemPrompt}` }, { role: "user", content: "Two." }])
      await server.close()
      fs.writeFileSync(path.join(kvDir, "corrupt.kv"), "this is not a llama.cpp state file")
      const stampFile = path.join(kvDir, "foreign.kv.json")
      fs.writeFileSync(stampFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(stampFile, "utf8")), model: "another-model" }))
      logLines.length = 0
      server = await start()
      for (const id of ["corrupt", "foreign"]) {
        const resumed = await turn(server, id, [{ role: "user", content: "Again?" }])
        // Nothing from disk: at most the chat template's opening, cached from the other session's turn.
        expect(resumed.usage!.prompt_tokens_details?.cached_tokens ?? 0).toBeLessThan(16)
        expect(resumed.choices[0]!.message.content!.length).toBeGreaterThan(0)
      }
      const messages = logLines.map((line) => (JSON.parse(line) as { msg: unknown }).msg)
      expect(messages).toContain("session KV file could not be restored; the history is evaluated again")
      expect(messages).toContain("session KV file does not match this model; the history is evaluated again")
    } finally {
      await server.close()
    }
  }, 180_000)

  it("keeps the saved files within their byte limit, deleting the least recently saved first", async () => {
    const server = await start(1)
    try {
      await turn(server, "small-1", [{ role: "user", content: "Hi." }])
      await turn(server, "small-2", [{ role: "user", content: "Hello." }])
      expect(fs.existsSync(path.join(kvDir, "small-1.kv"))).toBe(false)
    } finally {
      await server.close()
    }
  }, 180_000)
})
