import * as net from "node:net"
import { Deferred, Effect, Layer } from "effect"
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { firstSseFrame, health, postJson, rawExchange, rawStatus, readAll, sseData, startListening, startServer, waitForHealth } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

// SimBackend behind the real HTTP server: deterministic latency, so load and timeouts are reproducible.

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

const long = (extra: Record<string, unknown> = {}) => ({
  model: "sim",
  messages: [{ role: "user", content: "go on" }],
  max_tokens: 1_000_000,
  ignore_eos: true,
  ...extra
})

const errorOf = async (response: Response) => ((await response.json()) as ErrorBody).error

describe("body limits, load and stage timeouts", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 10_000_000, tokenLatency: 5 }), {
      scheduler: { maxQueue: 1 },
      maxBodyBytes: 64 * 1024
    })
  })
  afterAll(() => server?.close())

  it("answers 413 from Content-Length without reading the body", async () => {
    const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
      "Content-Length: 1073741824\r\n\r\n{\"model\": "
    // The client never sends the gigabyte it announced: an answer at all means the server did not wait for it.
    const response = await rawExchange(server.port, head)
    expect(rawStatus(response)).toBe(413)
    expect(response).toMatch(/x-request-id: /i)
    expect(response).toContain("\"code\":\"request_too_large\"")
    expect((await health(server)).status).toBe(200)
  })

  it("answers 413 while reading a chunked body that grows past the limit", async () => {
    const chunk = "x".repeat(100 * 1024)
    const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
      `Transfer-Encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n`
    // No terminating chunk: the body never ends, so the answer comes from the running count.
    const response = await rawExchange(server.port, head)
    expect(rawStatus(response)).toBe(413)
    expect(response).toContain("\"code\":\"request_too_large\"")
  })

  it("accepts a chunked body under the limit", async () => {
    const body = JSON.stringify(long({ max_tokens: 2 }))
    const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n" +
      `Transfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`
    expect(rawStatus(await rawExchange(server.port, head))).toBe(200)
  })

  it("reads a body that arrives in pieces, and serves on after a client leaves in the middle of one", async () => {
    const body = JSON.stringify(long({ max_tokens: 2 }))
    const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n" +
      `Content-Length: ${body.length}\r\n\r\n`
    const inPieces = new Promise<string>((resolve, reject) => {
      const socket = net.connect(server.port, "127.0.0.1")
      let received = ""
      socket.on("data", (data) => (received += data.toString("latin1")))
      socket.on("close", () => resolve(received))
      socket.on("error", reject)
      socket.write(head + body.slice(0, 10))
      setTimeout(() => socket.write(body.slice(10)), 50)
    })
    expect(rawStatus(await inPieces)).toBe(200)

    const goneAway = async () => {
      const metrics = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text()
      return Number(/weft_requests_total\{endpoint="\/v1\/chat\/completions",[^}]*status="499"[^}]*\} (\d+)/.exec(metrics)?.[1] ?? 0)
    }
    const goneBefore = await goneAway()
    const left = await new Promise<void>((resolve, reject) => {
      const socket = net.connect(server.port, "127.0.0.1", () => {
        socket.write(head + body.slice(0, 10))
        setTimeout(() => socket.destroy(), 50)
      })
      socket.on("close", () => resolve())
      socket.on("error", reject)
    })
    expect(left).toBeUndefined()
    // Its handler ended (counted as 499) rather than waiting on for the rest of the body.
    await vi.waitFor(async () => expect(await goneAway()).toBe(goneBefore + 1), { timeout: 5_000 })
    expect((await health(server)).status).toBe(200)
    const after = await postJson(server, "/v1/chat/completions", long({ max_tokens: 2 }))
    expect(after.status).toBe(200)
  })

  it("answers 429 with Retry-After when the queue is full, and 408 when the queue wait times out", async () => {
    const holder = new AbortController()
    const holding = await postJson(server, "/v1/chat/completions", long({ stream: true }), { signal: holder.signal })
    await firstSseFrame(holding)

    const timedOut = await postJson(server, "/v1/chat/completions", long({ timeout_queue_ms: 50 }))
    expect(timedOut.status).toBe(408)
    const timeout = await errorOf(timedOut)
    expect(timeout.code).toBe("queue_timeout")
    expect(timeout.message).toContain("queue wait exceeded its limit of 50 ms")

    const waiter = new AbortController()
    const waiting = postJson(server, "/v1/chat/completions", long(), { signal: waiter.signal }).catch((error: unknown) => error)
    await waitForHealth(server, (body) => body.queue.length === 1)
    const rejected = await postJson(server, "/v1/chat/completions", long())
    expect(rejected.status).toBe(429)
    expect(Number(rejected.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
    expect((await errorOf(rejected)).code).toBe("queue_full")

    waiter.abort()
    holder.abort()
    await waiting
    await waitForHealth(server, (body) => body.slots.free === 1 && body.queue.length === 0)
  })

  it("answers 504 for first-token and total timeouts, naming the stage and limit", async () => {
    const firstToken = await postJson(server, "/v1/chat/completions", long({ timeout_first_token_ms: 1 }))
    expect(firstToken.status).toBe(504)
    const firstTokenError = await errorOf(firstToken)
    expect(firstTokenError.code).toBe("generation_timeout")
    expect(firstTokenError.message).toContain("time to first token exceeded its limit of 1 ms")

    const total = await postJson(server, "/v1/completions", { model: "sim", prompt: "x", max_tokens: 1_000_000, timeout_total_ms: 100 })
    expect(total.status).toBe(504)
    expect((await errorOf(total)).message).toContain("total generation time exceeded its limit of 100 ms")
  })

  it("sends an error after the stream started as an in-band frame, then ends the stream", async () => {
    const response = await postJson(server, "/v1/chat/completions", long({ stream: true, timeout_total_ms: 100 }))
    expect(response.status).toBe(200)
    const frames = sseData(await response.text())
    expect(frames).not.toContain("[DONE]")
    const last = JSON.parse(frames.at(-1)!) as ErrorBody
    expect(last.error.code).toBe("generation_timeout")
    expect(last.error.message).toContain("100 ms")
    expect(frames.length).toBeGreaterThan(2)
  })

  it("cancels a non-streaming request whose client disconnects while waiting", async () => {
    const controller = new AbortController()
    const pending = postJson(server, "/v1/chat/completions", long(), { signal: controller.signal }).catch((error: unknown) => error)
    await waitForHealth(server, (body) => body.slots.free === 0)
    controller.abort()
    expect(await pending).toBeInstanceOf(Error)
    await waitForHealth(server, (body) => body.slots.free === 1 && body.queue.length === 0)
  })

  it("frees the slot of a stream whose client disconnects", async () => {
    const controller = new AbortController()
    const response = await postJson(server, "/v1/chat/completions", long({ stream: true }), { signal: controller.signal })
    const reader = await firstSseFrame(response)
    expect((await health(server)).body.slots.free).toBe(0)
    controller.abort()
    await readAll(reader).catch(() => undefined)
    await waitForHealth(server, (body) => body.slots.free === 1)
  })
})

describe("server-wide limits", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 64, tokenLatency: 5 }), {
      scheduler: { timeouts: { totalMs: 100 } }
    })
  })
  afterAll(() => server?.close())

  it("caps a per-request timeout at the server's", async () => {
    const response = await postJson(server, "/v1/chat/completions", long({ max_tokens: 50, timeout_total_ms: 1_000_000 }))
    expect(response.status).toBe(504)
    expect((await errorOf(response)).message).toContain("limit of 100 ms")
  })

  it("answers a prompt longer than the context with 400 context_length_exceeded", async () => {
    const response = await postJson(server, "/v1/chat/completions", long({ messages: [{ role: "user", content: "y".repeat(500) }] }))
    expect(response.status).toBe(400)
    expect((await errorOf(response)).code).toBe("context_length_exceeded")
  })
})

describe("while the model loads", () => {
  it("answers 503 on /health and requests, then serves once loaded", async () => {
    const gate = Effect.runSync(Deferred.make<void>())
    const backend = Layer.unwrapEffect(Effect.as(Deferred.await(gate), SimBackend.layer({ parallel: 1, contextSize: 256, tokenLatency: 1 })))
    const server = await startListening(backend)
    try {
      const loading = await health(server)
      expect(loading.status).toBe(503)
      expect(loading.body.status).toBe("loading")
      const request = await postJson(server, "/v1/chat/completions", long({ max_tokens: 1 }))
      expect(request.status).toBe(503)
      expect((await errorOf(request)).code).toBe("model_loading")
      expect((await fetch(`${server.url}/v1/models`)).status).toBe(503)

      Effect.runSync(Deferred.succeed(gate, undefined))
      await server.ready()
      expect(await health(server)).toEqual({ status: 200, body: { status: "ok", slots: { total: 1, free: 1 }, queue: { length: 0, limit: 64 } } })
      expect((await postJson(server, "/v1/chat/completions", long({ max_tokens: 1 }))).status).toBe(200)
    } finally {
      await server.close()
    }
  })
})
