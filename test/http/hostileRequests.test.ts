import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postJson, rawExchange, rawStatus, startServer } from "../support/testServer.js"
import type { TestServer, TestServerOptions } from "../support/testServer.js"

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

const chat = (extra: Record<string, unknown> = {}) => ({ model: "sim", messages: [{ role: "user", content: "Hello" }], max_tokens: 2, ...extra })

const simServer = (options: TestServerOptions = {}) =>
  startServer(SimBackend.layer({ parallel: 1, contextSize: 4096, tokenLatency: 1 }), options)

const errorOf = async (response: Response, status: number) => {
  const text = await response.text()
  expect({ status: response.status, text: text.slice(0, 300) }).toMatchObject({ status })
  const body = JSON.parse(text) as ErrorBody
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"])
  return { ...body.error, length: text.length }
}

/** `depth` arrays, one inside the other, as JSON text. */
const nested = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`

const rawHeaders = (response: string) => response.slice(0, response.indexOf("\r\n\r\n")).toLowerCase()

describe("hostile requests, default settings", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await simServer()
  })
  afterAll(() => server?.close())

  const stillServes = async () => expect((await postJson(server, "/v1/chat/completions", chat())).status).toBe(200)

  it("answers deep nesting with 400, not a stack overflow (finding 4)", async () => {
    for (const depth of [5_000, 100_000]) {
      for (const field of ["temperature", "unknown_field"]) {
        const body = `{"model": "sim", "messages": [{"role": "user", "content": "x"}], "${field}": ${nested(depth)}}`
        const error = await errorOf(await postJson(server, "/v1/chat/completions", body), 400)
        expect({ depth, field, code: error.code }).toEqual({ depth, field, code: "nesting_too_deep" })
        expect(error.message).toContain("64")
      }
    }
    await stillServes()
  })

  it("accepts a json_schema nested as deep as real schemas go", async () => {
    let schema: Record<string, unknown> = { type: "string" }
    for (let level = 0; level < 20; level++) schema = { type: "object", properties: { inner: schema }, required: ["inner"] }
    const response = await postJson(server, "/v1/chat/completions", chat({ response_format: { type: "json_schema", json_schema: { name: "deep", schema } } }))
    expect(response.status).toBe(200)
  })

  it("quotes only a short prefix of a huge bad value (finding 7)", async () => {
    const huge = "9".repeat(3 * 1024 * 1024)
    for (const body of [
      JSON.stringify(chat({ temperature: huge })),
      JSON.stringify(chat({ temperature: [huge] })),
      JSON.stringify(chat({ model: huge })),
      JSON.stringify(chat({ messages: [{ role: huge, content: "x" }] }))
    ]) {
      const response = await postJson(server, "/v1/chat/completions", body)
      expect(response.status).toBeGreaterThanOrEqual(400)
      expect(response.status).toBeLessThan(500)
      const error = await errorOf(response, response.status)
      expect(error.length).toBeLessThan(1_000)
      expect(error.message).toContain("…")
    }
    await stillServes()
  })

  it("answers a wrong method on a known path with 405 and Allow (finding 8)", async () => {
    const get = await fetch(`${server.url}/v1/chat/completions`)
    const error = await errorOf(get, 405)
    expect(error.code).toBe("method_not_allowed")
    expect(get.headers.get("allow")).toBe("POST, OPTIONS")
    const put = await fetch(`${server.url}/v1/completions`, { method: "PUT", headers: { "content-type": "application/json" }, body: "{}" })
    expect(put.status).toBe(405)
    expect(put.headers.get("allow")).toBe("POST, OPTIONS")
    const post = await postJson(server, "/v1/sessions/abc", {})
    expect(post.status).toBe(405)
    expect(post.headers.get("allow")).toBe("GET, HEAD, DELETE, OPTIONS")
    const health = await fetch(`${server.url}/health`, { method: "DELETE" })
    expect(health.status).toBe(405)
    expect(health.headers.get("allow")).toBe("GET, HEAD, OPTIONS")
    expect((await errorOf(await fetch(`${server.url}/v1/nothing`), 404)).code).toBe("unknown_url")
  })

  it("refuses a POST body that is not declared JSON with 415 (finding 6)", async () => {
    for (const contentType of ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]) {
      const response = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": contentType },
        body: JSON.stringify(chat())
      })
      expect({ contentType, code: (await errorOf(response, 415)).code }).toEqual({ contentType, code: "unsupported_media_type" })
    }
    const untyped = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", body: new Blob([JSON.stringify(chat())]) })
    expect((await errorOf(untyped, 415)).code).toBe("unsupported_media_type")
    for (const contentType of ["application/json; charset=utf-8", "Application/JSON", "application/vnd.weft+json"]) {
      const response = await postJson(server, "/v1/chat/completions", chat(), { headers: { "content-type": contentType } })
      expect({ contentType, status: response.status }).toEqual({ contentType, status: 200 })
    }
  })

  it("refuses a Host that is not a loopback name when bound to loopback (finding 6)", async () => {
    const request = (host: string) =>
      `GET /v1/models HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`
    const refused = await rawExchange(server.port, request("evil.example"))
    expect(rawStatus(refused)).toBe(403)
    const body = JSON.parse(refused.slice(refused.indexOf("\r\n\r\n") + 4)) as ErrorBody
    expect(body.error.code).toBe("host_not_allowed")
    expect(rawStatus(await rawExchange(server.port, request("evil.example:8080")))).toBe(403)
    expect(rawStatus(await rawExchange(server.port, request("localhost.evil.example")))).toBe(403)
    for (const host of ["localhost", `localhost:${server.port}`, `127.0.0.1:${server.port}`, "[::1]", `[::1]:${server.port}`, "LOCALHOST."]) {
      expect({ host, status: rawStatus(await rawExchange(server.port, request(host))) }).toEqual({ host, status: 200 })
    }
  })

  it("sends no CORS headers and refuses preflights when no origin is allowed (finding 6)", async () => {
    const preflight = await fetch(`${server.url}/v1/chat/completions`, {
      method: "OPTIONS",
      headers: { origin: "https://evil.example", "access-control-request-method": "POST", "access-control-request-headers": "content-type" }
    })
    expect(preflight.status).toBe(403)
    expect(preflight.headers.get("access-control-allow-origin")).toBeNull()
    expect((await errorOf(preflight, 403)).code).toBe("origin_not_allowed")
    const simple = await fetch(`${server.url}/v1/models`, { headers: { origin: "https://evil.example" } })
    expect(simple.status).toBe(200)
    expect(simple.headers.get("access-control-allow-origin")).toBeNull()
  })

  it("answers a plain OPTIONS with Allow", async () => {
    const response = await fetch(`${server.url}/v1/sessions/abc`, { method: "OPTIONS" })
    expect(response.status).toBe(204)
    expect(response.headers.get("allow")).toBe("GET, HEAD, DELETE, OPTIONS")
  })
})

describe("hostile requests, explicit settings", () => {
  it("answers preflights and adds Allow-Origin for listed origins only", async () => {
    const server = await simServer({ corsOrigins: ["https://app.example"] })
    try {
      const preflight = (origin: string) =>
        fetch(`${server.url}/v1/chat/completions`, {
          method: "OPTIONS",
          headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type, x-session-id" }
        })
      const allowed = await preflight("https://app.example")
      expect(allowed.status).toBe(204)
      expect(allowed.headers.get("access-control-allow-origin")).toBe("https://app.example")
      expect(allowed.headers.get("access-control-allow-methods")).toBe("POST")
      const allowHeaders = (allowed.headers.get("access-control-allow-headers") ?? "").toLowerCase()
      for (const header of ["authorization", "content-type", "x-session-id", "x-request-id"]) expect(allowHeaders).toContain(header)
      expect(allowed.headers.get("vary")?.toLowerCase()).toContain("origin")
      expect((await preflight("https://evil.example")).status).toBe(403)

      const response = await postJson(server, "/v1/chat/completions", chat(), { headers: { "content-type": "application/json", origin: "https://app.example" } })
      expect(response.status).toBe(200)
      expect(response.headers.get("access-control-allow-origin")).toBe("https://app.example")
      expect(response.headers.get("access-control-expose-headers")?.toLowerCase()).toContain("x-request-id")
      const foreign = await postJson(server, "/v1/chat/completions", chat(), { headers: { "content-type": "application/json", origin: "https://evil.example" } })
      expect(foreign.headers.get("access-control-allow-origin")).toBeNull()
    } finally {
      await server.close()
    }
  })

  it("allows any origin with *, and any Host with *", async () => {
    const server = await simServer({ corsOrigins: ["*"], allowedHosts: ["*"] })
    try {
      const preflight = await fetch(`${server.url}/v1/models`, {
        method: "OPTIONS",
        headers: { origin: "https://anywhere.example", "access-control-request-method": "GET" }
      })
      expect(preflight.status).toBe(204)
      expect(preflight.headers.get("access-control-allow-origin")).toBe("*")
      const response = await rawExchange(server.port, "GET /v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
      expect(rawStatus(response)).toBe(200)
    } finally {
      await server.close()
    }
  })

  it("allows only the listed hosts", async () => {
    const server = await simServer({ allowedHosts: ["weft.internal"] })
    try {
      const request = (host: string) => `GET /health HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`
      expect(rawStatus(await rawExchange(server.port, request("weft.internal:8080")))).toBe(200)
      expect(rawStatus(await rawExchange(server.port, request("localhost")))).toBe(403)
      expect(rawHeaders(await rawExchange(server.port, request("localhost")))).toContain("content-type: application/json")
    } finally {
      await server.close()
    }
  })
})
