import OpenAI from "openai"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import type { Principal } from "../../src/identity/Principal.js"
import { firstSseFrame, postJson, readAll, startServer } from "../support/testServer.js"
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

  it("writes one audit record per request, with no key and no prompt or completion text, and reads them back", async () => {
    const sent: Array<string> = []
    // The rpm limit of the test above may still hold: either answer is a request to audit.
    const answered = await client.completions.create({ model: "sim", prompt: `${secretPrompt} again`, max_tokens: 4 }).withResponse().then(
      (ok) => ok.response.headers.get("x-request-id"),
      (error: unknown) => (error as InstanceType<typeof OpenAI.APIError>).headers?.get("x-request-id")
    )
    sent.push(answered!)
    for (const url of ["/v1/models", "/v1/nowhere?api_key=sk-weft-secretinquery", "/health"]) {
      const response = await fetch(`${server.url}${url}`, { headers: { authorization: `Bearer ${apiKey}` } })
      sent.push(response.headers.get("x-request-id")!)
    }
    const reply = await fetch(`${server.url}/admin/audit?limit=1000&tenant=acme`)
    expect(reply.status).toBe(200)
    const listed = (await reply.json()) as { object: string; data: ReadonlyArray<AuditLine>; has_more: boolean }
    expect(listed.object).toBe("list")
    expect(listed.has_more).toBe(false)
    // Newest last: the requests of this test are the last four, in order.
    expect(listed.data.slice(-4).map((record) => record.requestId)).toEqual(sent)
    expect(listed.data.slice(-3).map((record) => [record.method, record.path, record.status])).toEqual([
      ["GET", "/v1/models", 200],
      ["GET", "/v1/nowhere", 404],
      ["GET", "/health", 200]
    ])
    for (const record of listed.data) expect(record).toMatchObject({ kind: "request", keyId: "key_alpha", tenant: "acme" })
    const generated = listed.data.filter((record) => record.status === 200 && record.path !== "/v1/models" && record.path !== "/health")
    expect(generated.length).toBeGreaterThanOrEqual(3)
    for (const record of generated) {
      expect(record.promptTokens).toBeGreaterThan(0)
      expect(record.completionTokens).toBeGreaterThan(0)
    }

    const limited = await fetch(`${server.url}/admin/audit?limit=2`)
    const lastTwo = (await limited.json()) as { data: ReadonlyArray<AuditLine>; has_more: boolean }
    expect(lastTwo.has_more).toBe(true)
    // The read above is a request too, recorded once it was answered.
    expect(lastTwo.data.map((record) => [record.requestId, record.path])).toEqual([[sent.at(-1), "/health"], [reply.headers.get("x-request-id"), "/admin/audit"]])
    const future = await fetch(`${server.url}/admin/audit?since=${Math.floor(Date.now() / 1000) + 3600}`)
    expect(((await future.json()) as { data: ReadonlyArray<AuditLine> }).data).toEqual([])
    const other = await fetch(`${server.url}/admin/audit?tenant=globex`)
    expect(((await other.json()) as { data: ReadonlyArray<AuditLine> }).data).toEqual([])
    for (const bad of ["limit=0", "limit=1001", "limit=ten", "since=yesterday"]) {
      const refused = await fetch(`${server.url}/admin/audit?${bad}`)
      expect(refused.status).toBe(400)
      expect(((await refused.json()) as { error: { type: string } }).error.type).toBe("invalid_request_error")
    }

    const text = fs.readFileSync(auditPath, "utf8")
    const lines = text.trimEnd().split("\n").map((line) => JSON.parse(line) as AuditLine)
    expect(new Set(lines.map((line) => line.requestId)).size).toBe(lines.length)
    for (const id of sent) expect(lines.filter((line) => line.requestId === id)).toHaveLength(1)
    expect(text).not.toContain("PURPLE-ELEPHANT")
    expect(text).not.toContain("secretinquery")
    expect(text).not.toContain("sk-weft-")
    expect(text).not.toContain(apiKey.slice(8))
    expect(text).not.toContain("héllo")
  })

  it("sends no x-ratelimit headers and enforces no limit without a principal", async () => {
    const open = await startServer(SimBackend.layer({ parallel: 1, contextSize: 256, tokenLatency: 1 }))
    try {
      const openClient = new OpenAI({ baseURL: open.baseURL, apiKey, maxRetries: 0 })
      for (let index = 0; index < 4; index++) {
        const { response } = await openClient.completions.create({ model: "sim", prompt: "hi", max_tokens: 2 }).withResponse()
        expect([...response.headers.keys()].filter((name) => name.startsWith("x-ratelimit"))).toEqual([])
      }
    } finally {
      await open.close()
    }
  })
})

describe("a concurrency limit over HTTP", () => {
  it("holds the place until a stream is fully sent, then frees it", async () => {
    const server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 5 }), {
      principal: { ...principal, keyLimits: {}, tenantLimits: { maxConcurrent: 1 } }
    })
    try {
      const client = new OpenAI({ baseURL: server.baseURL, apiKey, maxRetries: 0 })
      const running = await postJson(server, "/v1/completions", { model: "sim", prompt: "hi", max_tokens: 200, stream: true })
      const reader = await firstSseFrame(running)
      const refused = await client.completions.create({ model: "sim", prompt: "hi", max_tokens: 2 }).then(() => undefined, (error: unknown) => error)
      expect(refused).toBeInstanceOf(OpenAI.RateLimitError)
      expect(refused).toMatchObject({ code: "rate_limit_exceeded", type: "requests" })
      expect((refused as InstanceType<typeof OpenAI.RateLimitError>).headers.get("retry-after")).toBe("1")
      await readAll(reader)
      const completion = await client.completions.create({ model: "sim", prompt: "hi", max_tokens: 2 })
      expect(completion.usage?.completion_tokens).toBe(2)
    } finally {
      await server.close()
    }
  })
})
