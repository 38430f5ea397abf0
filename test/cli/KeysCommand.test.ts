import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import OpenAI from "openai"
import { describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { keysDatabasePath } from "../../src/identity/KeyStore.js"
import { openServerRefusal } from "../../src/identity/Authentication.js"
import { startListening, startServer } from "../support/testServer.js"
import { runWeftInProcess, spawnWeft } from "../support/weftCli.js"

/** `weft ARGS` in this process: these tests are about what the commands do, not about the process. */
const run = runWeftInProcess

const sim = () => SimBackend.layer({ parallel: 1, contextSize: 4096, tokenLatency: 1 })

const ask = (baseURL: string, apiKey: string) =>
  new OpenAI({ baseURL, apiKey, maxRetries: 0 }).chat.completions.create({ model: "sim", messages: [{ role: "user", content: "hi" }], max_tokens: 2 })

describe("weft keys and weft tenants", () => {
  it("creates a key a running server accepts at once, and a revoke takes effect at its next request", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-keys-cli-"))
    const created = await run(["keys", "create", "--name", "ci", "--tenant", "acme", "--scope", "inference", "--expires", "30d", "--rpm", "60", "--json", "--data-dir", dataDir])
    expect(created.code).toBe(0)
    const key = JSON.parse(created.stdout) as { id: string; key: string; tenant: string; scopes: Array<string>; limits: { rpm: number }; expires_at: number }
    expect(key).toMatchObject({ tenant: "acme", scopes: ["inference"], limits: { rpm: 60 } })
    expect(key.key).toMatch(/^sk-weft-/)

    const server = await startServer(sim(), { keysDatabasePath: keysDatabasePath(dataDir) })
    try {
      expect((await ask(server.baseURL, key.key)).choices).toHaveLength(1)
      const listed = await run(["keys", "list", "--json", "--data-dir", dataDir])
      expect(listed.stdout).toContain(key.id)
      expect(listed.stdout).not.toContain(key.key)
      expect((JSON.parse(listed.stdout) as { data: Array<{ last_used_at: number | null }> }).data[0]!.last_used_at).not.toBeNull()

      const rotated = await run(["keys", "rotate", key.id, "--overlap", "1h", "--json", "--data-dir", dataDir])
      const next = JSON.parse(rotated.stdout) as { id: string; key: string; previous: { id: string; expires_at: number } }
      expect(next.previous.id).toBe(key.id)
      expect(next.previous.expires_at).toBeLessThan(key.expires_at)
      expect((await ask(server.baseURL, key.key)).choices).toHaveLength(1)
      expect((await ask(server.baseURL, next.key)).choices).toHaveLength(1)

      expect((await run(["keys", "revoke", key.id, "--data-dir", dataDir])).code).toBe(0)
      await expect(ask(server.baseURL, key.key)).rejects.toBeInstanceOf(OpenAI.AuthenticationError)
      expect((await ask(server.baseURL, next.key)).choices).toHaveLength(1)

      const unknown = await run(["keys", "revoke", "key_nope", "--data-dir", dataDir])
      expect(unknown.code).toBe(1)
      expect(unknown.stderr).toContain("No API key with id `key_nope` exists")
    } finally {
      await server.close()
    }
  }, 240_000)

  it("sets tenant limits and default priority", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-tenants-cli-"))
    expect((await run(["tenants", "set", "acme", "--priority", "high", "--tpm", "1000", "--data-dir", dataDir])).code).toBe(0)
    expect((await run(["tenants", "set", "acme", "--rpm", "5", "--data-dir", dataDir])).code).toBe(0)
    const listed = await run(["tenants", "list", "--json", "--data-dir", dataDir])
    expect(JSON.parse(listed.stdout)).toEqual({ object: "list", data: [{ name: "acme", priority: "high", limits: { rpm: 5, tpm: 1000, max_concurrent: null } }] })
    const bad = await run(["tenants", "set", "no spaces", "--data-dir", dataDir])
    expect(bad.code).toBe(1)
  }, 180_000)

  it("keeps --help free of node-llama-cpp", async () => {
    for (const command of [["keys", "create", "--help"], ["tenants", "list"]]) {
      const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-keys-help-"))
      const result = await spawnWeft([...command, ...(command.includes("--help") ? [] : ["--data-dir", dataDir])], ["./test/support/noNodeLlamaCpp.mjs"])
      expect(result.stderr).not.toContain("node-llama-cpp imported")
      expect(result.code).toBe(0)
    }
  }, 180_000)
})

describe("an open server beyond loopback", () => {
  it("is refused without keys unless auth is off, naming both fixes", async () => {
    expect(openServerRefusal("127.0.0.1", "auto", false)).toBeUndefined()
    expect(openServerRefusal("localhost", "auto", false)).toBeUndefined()
    expect(openServerRefusal("[::1]", "auto", false)).toBeUndefined()
    expect(openServerRefusal("0.0.0.0", "auto", true)).toBeUndefined()
    expect(openServerRefusal("0.0.0.0", "off", false)).toBeUndefined()
    expect(openServerRefusal("0.0.0.0", "on", false)).toBeUndefined()
    const refusal = openServerRefusal("0.0.0.0", "auto", false)
    expect(refusal).toContain("weft keys create")
    expect(refusal).toContain("--auth off")

    await expect(startListening(sim(), { host: "0.0.0.0" })).rejects.toThrow(/--auth off/)
    const open = await startListening(sim(), { host: "0.0.0.0", auth: { mode: "off", metricsPublic: false } })
    await open.close()
  })

  it("makes weft serve exit 1 with the message", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-open-"))
    const result = await run(["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", dataDir, "--log-level", "error"])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain("refusing to listen on 0.0.0.0 without authentication")
    expect(result.stderr).toContain("--auth off")
  }, 240_000)
})
