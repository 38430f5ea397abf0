import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { keyStoreIn } from "../support/keys.js"
import { startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const keys = keyStoreIn("weft-key-limits-")

// The limits a key is created with reach the limiter through authentication, with no test-only principal.
describe("a key's own limits, end to end", () => {
  let server: TestServer
  let limited: string
  let unlimited: string

  beforeAll(async () => {
    limited = (await keys.create("acme", { limits: { rpm: 2 } })).key
    unlimited = (await keys.create("globex")).key
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 1 }), { keysDatabasePath: keys.databasePath })
  })
  afterAll(async () => {
    await server?.close()
    await keys.close()
  })

  const ask = (apiKey: string) =>
    new OpenAI({ baseURL: server.baseURL, apiKey, maxRetries: 0 }).chat.completions
      .create({ model: "sim", messages: [{ role: "user", content: "hi" }], max_tokens: 2 })
      .withResponse()

  it("a key created with rpm 2 gets its third request in a minute refused with 429 and OpenAI's headers; another key is not", async () => {
    const first = await ask(limited)
    expect(first.response.headers.get("x-ratelimit-limit-requests")).toBe("2")
    expect(first.response.headers.get("x-ratelimit-remaining-requests")).toBe("1")
    await ask(limited)
    const refused = await ask(limited).catch((caught: unknown) => caught)
    expect(refused).toBeInstanceOf(OpenAI.RateLimitError)
    const error = refused as InstanceType<typeof OpenAI.RateLimitError>
    expect(error.code).toBe("rate_limit_exceeded")
    expect(error.headers.get("x-ratelimit-remaining-requests")).toBe("0")
    expect(Number(error.headers.get("retry-after"))).toBeGreaterThan(0)
    const other = await ask(unlimited)
    expect(other.response.status).toBe(200)
    expect(other.response.headers.get("x-ratelimit-limit-requests")).toBeNull()
  })
})
