// `weft keys` against a cluster's Postgres: a key created there is accepted by a server whose keys are there.
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postgresAvailable, startPostgres, type TestPostgres } from "../support/postgres.js"
import { startServer } from "../support/testServer.js"
import { runWeftInProcess as weft } from "../support/weftCli.js"

describe.skipIf(!postgresAvailable() && process.env.CI === undefined)("weft keys --cluster", () => {
  let postgres: TestPostgres
  beforeAll(async () => {
    postgres = await startPostgres()
  }, 120_000)
  afterAll(async () => {
    await postgres?.stop()
  })

  it("creates and lists keys in the cluster's database, where a clustered server finds them", async () => {
    const created = await weft(["keys", "create", "--name", "ops", "--tenant", "acme", "--scope", "inference", "--json", "--cluster", postgres.url])
    expect(created.code, created.stderr).toBe(0)
    const key = JSON.parse(created.stdout) as { id: string; key: string; tenant: string }
    expect(key.tenant).toBe("acme")
    const server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 4096, tokenLatency: 1 }), { keysDatabasePath: postgres.url })
    try {
      const answer = await new OpenAI({ baseURL: server.baseURL, apiKey: key.key, maxRetries: 0 }).chat.completions.create({ model: "sim", messages: [{ role: "user", content: "hi" }], max_tokens: 2 })
      expect(answer.choices).toHaveLength(1)
      await expect(new OpenAI({ baseURL: server.baseURL, apiKey: "sk-weft-unknown", maxRetries: 0 }).models.list()).rejects.toMatchObject({ status: 401 })
    } finally {
      await server.close()
    }
    const listed = await weft(["keys", "list", "--json", "--cluster", postgres.url])
    expect(listed.stdout).toContain(key.id)
    expect(listed.stdout).not.toContain(key.key)
  }, 120_000)
})
