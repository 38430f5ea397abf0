import OpenAI from "openai"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import type { Principal } from "../../src/identity/Principal.js"
import { startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const secretPrompt = "the password is PURPLE-ELEPHANT-42"
const apiKey = "sk-weft-0123456789abcdefghijklmnopqrstuvwxyz"

const principal: Principal = {
  keyId: "key_alpha",
  keyName: "alpha",
  tenant: "acme",
  scopes: ["inference", "admin"],
  keyLimits: { rpm: 3, tpm: 1000 },
  tenantLimits: { maxConcurrent: 4 }
}

interface AuditLine {
  readonly kind: string
  readonly requestId: string
  readonly keyId?: string
  readonly tenant?: string
  readonly method: string
  readonly path: string
  readonly status: number
  readonly durationMs: number
  readonly promptTokens?: number
  readonly completionTokens?: number
}

describe("rate limits and the audit log over HTTP", () => {
  let server: TestServer
  let client: OpenAI
  let auditPath: string

  beforeAll(async () => {
    auditPath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "weft-audit-")), "audit.jsonl")
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 1 }), { principal, auditLogPath: auditPath })
    client = new OpenAI({ baseURL: server.baseURL, apiKey, maxRetries: 0 })
  })
  afterAll(() => server?.close())

  it("reserves tokens at admission, settles them at the end, and answers 429 with Retry-After over the rpm limit", async () => {
    const first = await client.completions.create({ model: "sim", prompt: secretPrompt, max_tokens: 5 }).withResponse()
    const firstTotal = first.data.usage!.total_tokens
    expect(first.response.headers.get("x-ratelimit-limit-requests")).toBe("3")
    expect(first.response.headers.get("x-ratelimit-remaining-requests")).toBe("2")
    expect(first.response.headers.get("x-ratelimit-limit-tokens")).toBe("1000")
    // A JSON answer is sent after the generation ended: its tokens are settled at the real count.
    expect(first.response.headers.get("x-ratelimit-remaining-tokens")).toBe(String(1000 - firstTotal))

    // A stream's headers go out while it runs: its prompt and all of max_tokens are reserved.
    const streamed = await client.completions.create({ model: "sim", prompt: secretPrompt, max_tokens: 40, stream: true }).withResponse()
    expect(streamed.response.headers.get("x-ratelimit-remaining-tokens")).toBe(String(1000 - firstTotal - (first.data.usage!.prompt_tokens + 40)))
    for await (const _ of streamed.data) { /* drain */ }

    const chat = await client.chat.completions.create({ model: "sim", messages: [{ role: "user", content: secretPrompt }], max_tokens: 3 }).withResponse()
    expect(chat.response.headers.get("x-ratelimit-remaining-requests")).toBe("0")

    const refused = await client.chat.completions.create({ model: "sim", messages: [{ role: "user", content: secretPrompt }], max_tokens: 3 })
      .then(() => undefined, (error: unknown) => error)
    expect(refused).toBeInstanceOf(OpenAI.RateLimitError)
    const error = refused as InstanceType<typeof OpenAI.RateLimitError>
    expect(error.code).toBe("rate_limit_exceeded")
    const retryAfter = Number(error.headers.get("retry-after"))
    expect(retryAfter).toBeGreaterThanOrEqual(59)
    expect(retryAfter).toBeLessThanOrEqual(60)
    expect(error.headers.get("x-ratelimit-remaining-requests")).toBe("0")
    expect(error.headers.get("x-ratelimit-reset-requests")).toMatch(/^(\d+s|1m0s)$/)

    // More tokens than the limit allows in a whole minute: a 400, since waiting cannot help.
    const tooLarge = await client.completions.create({ model: "sim", prompt: "x", max_tokens: 5000 }).then(() => undefined, (caught: unknown) => caught)
    expect(tooLarge).toBeInstanceOf(OpenAI.BadRequestError)
    expect(tooLarge).toMatchObject({ code: "tokens_over_rate_limit", param: "max_tokens" })
  })
})
