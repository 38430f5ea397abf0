import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { JsonLogger } from "../../src/observability/JsonLogger.js"
import { parsePrometheusText, sampleValue } from "../support/prometheusText.js"
import { keyStoreIn } from "../support/keys.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

const keys = keyStoreIn("weft-auth-")

const client = (server: TestServer, apiKey: string | undefined) =>
  new OpenAI({
    baseURL: server.baseURL,
    apiKey: apiKey ?? "unused",
    maxRetries: 0,
    ...(apiKey === undefined ? { defaultHeaders: { Authorization: null } } : {})
  })

const ask = (server: TestServer, apiKey: string | undefined, extra: Record<string, unknown> = {}) =>
  client(server, apiKey).chat.completions.create({
    model: tinyModelId,
    messages: [{ role: "user", content: "Hello" }],
    max_tokens: 2,
    ...extra
  })

const bearer = (key: string) => ({ authorization: `Bearer ${key}` })

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("API keys over HTTP", () => {
  let server: TestServer
  let inference: string
  let admin: string
  let other: string

  beforeAll(async () => {
    inference = (await keys.create("acme")).key
    admin = (await keys.create("ops", { scopes: ["admin"] })).key
    other = (await keys.create("globex")).key
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 1024 }), { keysDatabasePath: keys.databasePath })
  })
  afterAll(async () => {
    await server?.close()
    await keys.close()
  })

  it("answers a request without a key with OpenAI's 401 (AuthenticationError, invalid_api_key)", async () => {
    const error = await ask(server, undefined).catch((caught: unknown) => caught)
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError)
    expect((error as InstanceType<typeof OpenAI.AuthenticationError>).status).toBe(401)
    expect((error as InstanceType<typeof OpenAI.AuthenticationError>).code).toBe("invalid_api_key")
    expect((error as InstanceType<typeof OpenAI.AuthenticationError>).type).toBe("invalid_request_error")
  })

  it("refuses a wrong, a malformed, a revoked and an expired key with 401", async () => {
    const revoked = await keys.create("acme")
    await keys.run((store) => store.revoke(revoked.id))
    const expired = await keys.create("acme", { expiresInMs: 1 })
    await sleep(5)
    for (const key of [`sk-weft-${"A".repeat(43)}`, "not-a-weft-key", revoked.key, expired.key]) {
      const error = await ask(server, key).catch((caught: unknown) => caught)
      expect(error).toBeInstanceOf(OpenAI.AuthenticationError)
      expect((error as InstanceType<typeof OpenAI.AuthenticationError>).code).toBe("invalid_api_key")
    }
  })

  it("accepts a key as a bearer token and in x-api-key", async () => {
    expect((await ask(server, inference)).choices).toHaveLength(1)
    const response = await fetch(`${server.baseURL}/models`, { headers: { "x-api-key": inference } })
    expect(response.status).toBe(200)
  })

  it("answers 403 for a key without the endpoint's scope", async () => {
    const response = await fetch(`${server.url}/admin/keys`, { headers: bearer(inference) })
    expect(response.status).toBe(403)
    expect(((await response.json()) as ErrorBody).error).toMatchObject({ code: "insufficient_scope", type: "invalid_request_error" })
    const error = await ask(server, admin).catch((caught: unknown) => caught)
    expect(error).toBeInstanceOf(OpenAI.PermissionDeniedError)
  })

  it("maps every endpoint × (no key, inference key, admin key) to its status", async () => {
    const session = "auth-matrix"
    await ask(server, inference, { max_tokens: 1 }).then(() =>
      client(server, inference).chat.completions.create(
        { model: tinyModelId, messages: [{ role: "user", content: "hi" }], max_tokens: 1 },
        { headers: { "x-session-id": session } }
      )
    )
    const throwaway = async () => (await keys.create("scratch")).id
    const endpoints: ReadonlyArray<readonly [string, string, () => Promise<{ path: string; body?: unknown }>]> = [
      ["GET", "/health", async () => ({ path: "/health" })],
      ["GET", "/metrics", async () => ({ path: "/metrics" })],
      ["GET", "/admin/stats", async () => ({ path: "/admin/stats" })],
      ["GET", "/admin/keys", async () => ({ path: "/admin/keys" })],
      ["POST", "/admin/keys", async () => ({ path: "/admin/keys", body: { name: "made", tenant: "scratch" } })],
      ["DELETE", "/admin/keys/{id}", async () => ({ path: `/admin/keys/${await throwaway()}` })],
      ["POST", "/admin/keys/{id}/rotate", async () => ({ path: `/admin/keys/${await throwaway()}/rotate` })],
      ["GET", "/v1/models", async () => ({ path: "/v1/models" })],
      ["GET", "/v1/models/{id}", async () => ({ path: `/v1/models/${tinyModelId}` })],
      ["POST", "/v1/chat/completions", async () => ({ path: "/v1/chat/completions", body: { model: tinyModelId, messages: [{ role: "user", content: "x" }], max_tokens: 1 } })],
      ["POST", "/v1/completions", async () => ({ path: "/v1/completions", body: { model: tinyModelId, prompt: "x", max_tokens: 1 } })],
      ["GET", "/v1/sessions/{id}", async () => ({ path: `/v1/sessions/${session}` })],
      ["GET", "/v1/unknown", async () => ({ path: "/v1/unknown" })],
      // Fine-tuning is not enabled on this server: an admin key gets its 404, an inference key never gets that far.
      ["GET", "/v1/files", async () => ({ path: "/v1/files" })],
      ["GET", "/v1/fine_tuning/jobs", async () => ({ path: "/v1/fine_tuning/jobs" })]
    ]
    const table: Record<string, Record<string, number>> = {}
    for (const [method, name, target] of endpoints) {
      const row: Record<string, number> = {}
      for (const [caller, key] of [["none", undefined], ["inference", inference], ["admin", admin]] as const) {
        const { path, body } = await target()
        const headers: Record<string, string> = key === undefined ? {} : bearer(key)
        if (body !== undefined) headers["content-type"] = "application/json"
        const response = await fetch(`${server.url}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
        await response.arrayBuffer()
        row[caller] = response.status
      }
      table[`${method} ${name}`] = row
    }
    expect(table).toEqual({
      "GET /health": { none: 200, inference: 200, admin: 200 },
      "GET /metrics": { none: 401, inference: 403, admin: 200 },
      "GET /admin/stats": { none: 401, inference: 403, admin: 200 },
      "GET /admin/keys": { none: 401, inference: 403, admin: 200 },
      "POST /admin/keys": { none: 401, inference: 403, admin: 201 },
      "DELETE /admin/keys/{id}": { none: 401, inference: 403, admin: 200 },
      "POST /admin/keys/{id}/rotate": { none: 401, inference: 403, admin: 201 },
      "GET /v1/models": { none: 401, inference: 200, admin: 403 },
      "GET /v1/models/{id}": { none: 401, inference: 200, admin: 403 },
      "POST /v1/chat/completions": { none: 401, inference: 200, admin: 403 },
      "POST /v1/completions": { none: 401, inference: 200, admin: 403 },
      "GET /v1/sessions/{id}": { none: 401, inference: 200, admin: 403 },
      "GET /v1/unknown": { none: 401, inference: 404, admin: 403 },
      "GET /v1/files": { none: 401, inference: 403, admin: 404 },
      "GET /v1/fine_tuning/jobs": { none: 401, inference: 403, admin: 404 }
    })
  })

  it("creates, lists, rotates and revokes keys over the admin API, and never lists a secret", async () => {
    const created = await postJson(server, "/admin/keys", { name: "ci", tenant: "acme", scopes: ["inference"], expires: "30d", rpm: 5 }, {
      headers: { "content-type": "application/json", ...bearer(admin) }
    })
    expect(created.status).toBe(201)
    const key = (await created.json()) as { id: string; key: string; tenant: string; limits: { rpm: number } }
    expect(key.key).toMatch(/^sk-weft-[\w-]{43}$/)
    expect(key.limits.rpm).toBe(5)
    expect((await ask(server, key.key)).choices).toHaveLength(1)
    const listed = await (await fetch(`${server.url}/admin/keys`, { headers: bearer(admin) })).text()
    expect(listed).toContain(key.id)
    expect(listed).not.toContain("sk-weft-")
    const bad = await postJson(server, "/admin/keys", { name: "x", tenant: "no spaces" }, { headers: { "content-type": "application/json", ...bearer(admin) } })
    expect(bad.status).toBe(400)
    expect(((await bad.json()) as ErrorBody).error.param).toBe("tenant")
    const missing = await fetch(`${server.url}/admin/keys/key_nope`, { method: "DELETE", headers: bearer(admin) })
    expect(missing.status).toBe(404)
    const revoked = await fetch(`${server.url}/admin/keys/${key.id}`, { method: "DELETE", headers: bearer(admin) })
    expect(revoked.status).toBe(200)
    await expect(ask(server, key.key)).rejects.toBeInstanceOf(OpenAI.AuthenticationError)
  })

  it("keeps a rotated key working until the overlap ends, and the new one after", async () => {
    const old = await keys.create("acme")
    const response = await postJson(server, `/admin/keys/${old.id}/rotate`, { overlap: "1s" }, {
      headers: { "content-type": "application/json", ...bearer(admin) }
    })
    expect(response.status).toBe(201)
    const rotated = (await response.json()) as { id: string; key: string; tenant: string; previous: { id: string } }
    expect(rotated.previous.id).toBe(old.id)
    expect(rotated.tenant).toBe("acme")
    expect((await ask(server, old.key)).choices).toHaveLength(1)
    expect((await ask(server, rotated.key)).choices).toHaveLength(1)
    await sleep(1100)
    await expect(ask(server, old.key)).rejects.toBeInstanceOf(OpenAI.AuthenticationError)
    expect((await ask(server, rotated.key)).choices).toHaveLength(1)
  })

  it("keeps tenants apart: another tenant's session is 404 to read, continue or delete", async () => {
    const turn = (key: string, content: string) =>
      client(server, key).chat.completions.create(
        { model: tinyModelId, messages: [{ role: "user", content }], max_tokens: 2 },
        { headers: { "x-session-id": "acme-private" } }
      )
    await turn(inference, "mine")
    const read = (key: string) => fetch(`${server.url}/v1/sessions/acme-private`, { headers: bearer(key) })
    expect((await read(inference)).status).toBe(200)
    expect((await read(other)).status).toBe(404)
    await expect(turn(other, "theirs")).rejects.toBeInstanceOf(OpenAI.NotFoundError)
    const deleted = await fetch(`${server.url}/v1/sessions/acme-private`, { method: "DELETE", headers: bearer(other) })
    expect(deleted.status).toBe(404)
    const body = (await (await read(inference)).json()) as { turns: number }
    expect(body.turns).toBe(1)
  })

  it("never reuses another tenant's prefix cache, even with the same cache_salt", async () => {
    const messages = [{ role: "system" as const, content: "You narrate very long stories about lighthouses." }, { role: "user" as const, content: "One more." }]
    const cached = async (key: string) =>
      (await ask(server, key, { messages, cache_salt: "shared" })).usage!.prompt_tokens_details?.cached_tokens ?? 0
    expect(await cached(inference)).toBe(0)
    expect(await cached(inference)).toBeGreaterThan(0)
    expect(await cached(other)).toBe(0)
  })

  it("counts requests and tokens by tenant in /metrics", async () => {
    await ask(server, other)
    const text = await (await fetch(`${server.url}/metrics`, { headers: bearer(admin) })).text()
    const families = parsePrometheusText(text)
    expect(sampleValue(families, "weft_requests_total", { model: tinyModelId, endpoint: "/v1/chat/completions", status: "200", tenant: "globex" }))
      .toBeGreaterThan(0)
    expect(sampleValue(families, "weft_prompt_tokens_total", { model: tinyModelId, tenant: "globex" })).toBeGreaterThan(0)
    expect(sampleValue(families, "weft_generation_tokens_total", { model: tinyModelId, tenant: "globex" })).toBeGreaterThan(0)
    expect(text).not.toContain("sk-weft-")
  })
})

describe("tenant defaults", () => {
  it("runs a tenant's requests at its default priority unless they name one, logged with tenant and key id, never the key", async () => {
    const store = keyStoreIn("weft-auth-priority-")
    const lines: Array<string> = []
    const key = await store.create("vip")
    await store.run((keyStore) => keyStore.setTenant("vip", { priority: "high" }))
    const server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 4096, tokenLatency: 1 }), {
      keysDatabasePath: store.databasePath,
      observability: JsonLogger.layer({ level: "info", format: "json", write: (line) => lines.push(line) })
    })
    try {
      const priorityOf = async (extra: Record<string, unknown>) => {
        const response = await postJson(server, "/v1/chat/completions", { model: "sim", messages: [{ role: "user", content: "x" }], max_tokens: 1, ...extra }, {
          headers: { "content-type": "application/json", "x-api-key": key.key }
        })
        expect(response.status).toBe(200)
        const requestId = response.headers.get("x-request-id")
        for (let attempt = 0; attempt < 200; attempt++) {
          const line = lines.map((text) => JSON.parse(text) as Record<string, unknown>)
            .find((entry) => entry.msg === "request completed" && entry.requestId === requestId)
          if (line !== undefined) {
            expect(line).toMatchObject({ tenant: "vip", keyId: key.id })
            return line.priority
          }
          await sleep(10)
        }
        throw new Error("no request log line")
      }
      expect(await priorityOf({})).toBe("high")
      expect(await priorityOf({ priority: "low" })).toBe("low")
    } finally {
      await server.close()
      await store.close()
    }
    expect(lines.some((line) => line.includes(key.key))).toBe(false)
  })
})

describe("--auth and --metrics-public", () => {
  const sim = () => SimBackend.layer({ parallel: 1, contextSize: 4096, tokenLatency: 1 })

  it("--metrics-public serves /metrics without a key while /admin stays closed", async () => {
    const store = keyStoreIn("weft-auth-metrics-")
    await store.create("acme")
    const server = await startServer(sim(), { keysDatabasePath: store.databasePath, auth: { mode: "auto", metricsPublic: true } })
    try {
      expect((await fetch(`${server.url}/metrics`)).status).toBe(200)
      expect((await fetch(`${server.url}/admin/stats`)).status).toBe(401)
    } finally {
      await server.close()
      await store.close()
    }
  })

  it("--auth on refuses every protected request while no key exists; --auth off ignores keys", async () => {
    const store = keyStoreIn("weft-auth-on-")
    const on = await startServer(sim(), { keysDatabasePath: store.databasePath, auth: { mode: "on", metricsPublic: false } })
    try {
      expect((await fetch(`${on.url}/v1/models`)).status).toBe(401)
      expect((await fetch(`${on.url}/health`)).status).toBe(200)
    } finally {
      await on.close()
    }
    await store.create("acme")
    const off = await startServer(sim(), { keysDatabasePath: store.databasePath, auth: { mode: "off", metricsPublic: false } })
    try {
      expect((await fetch(`${off.url}/v1/models`)).status).toBe(200)
      expect((await fetch(`${off.url}/admin/keys`)).status).toBe(200)
    } finally {
      await off.close()
      await store.close()
    }
  })
})
