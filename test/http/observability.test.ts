import { Layer, Option } from "effect"
import type { Tracer } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { JsonLogger } from "../../src/observability/JsonLogger.js"
import { weftMetricFamilies } from "../../src/observability/WeftMetrics.js"
import { parsePrometheusText, sampleValue } from "../support/prometheusText.js"
import { makeTestTracer } from "../support/testTracer.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

// The real HTTP server on SimBackend, with a test tracer and a JSON logger writing into an array.

const apiKey = "sk-weft-test-4f1c0ffee0ddba11"
const secretPrompt = "the launch code is TANGERINE-7731"

interface Usage {
  readonly prompt_tokens: number
  readonly completion_tokens: number
}

const chat = (server: TestServer, content: string, init: RequestInit & { readonly headers?: Record<string, string> } = {}) =>
  postJson(server, "/v1/chat/completions", { model: "sim", messages: [{ role: "user", content }], max_tokens: 8 }, {
    ...init,
    headers: { "content-type": "application/json", ...init.headers }
  })

const scrape = async (server: TestServer) => {
  const response = await fetch(`${server.url}/metrics`)
  expect(response.status).toBe(200)
  return { response, families: parsePrometheusText(await response.text()) }
}

/** Polls until `predicate` holds over the captured lines (the request log is written from the event stream). */
const waitForLine = async (lines: ReadonlyArray<string>, predicate: (entry: Record<string, unknown>) => boolean) => {
  for (let attempt = 0; attempt < 200; attempt++) {
    const found = lines.map((line) => JSON.parse(line) as Record<string, unknown>).find(predicate)
    if (found !== undefined) return found
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  throw new Error(`no log line matched; lines:\n${lines.join("\n")}`)
}

describe("observability over HTTP", () => {
  const lines: Array<string> = []
  const { spans, tracer } = makeTestTracer()
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 1 }), {
      observability: Layer.merge(
        Layer.setTracer(tracer),
        JsonLogger.layer({ level: "debug", format: "json", write: (line) => lines.push(line) })
      )
    })
  })
  afterAll(() => server?.close())

  it("exposes every family with HELP and TYPE in a strictly valid exposition, counting requests by endpoint and status", async () => {
    const before = await scrape(server)
    expect(before.response.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8")
    expect(before.response.headers.get("x-request-id")).toMatch(/^req_/)
    for (const family of weftMetricFamilies) {
      expect(before.families.get(family.name), family.name).toMatchObject({ type: family.type, help: family.help })
    }

    const ok = await chat(server, "hello")
    expect(ok.status).toBe(200)
    const usage = ((await ok.json()) as { usage: Usage }).usage
    const unknown = await fetch(`${server.url}/v1/nothing-here`)
    expect(unknown.status).toBe(404)
    expect(unknown.headers.get("x-request-id")).toMatch(/^req_/)
    const invalid = await postJson(server, "/v1/chat/completions", { model: "sim", messages: "not a list" })
    expect(invalid.status).toBe(400)

    const after = (await scrape(server)).families
    const delta = (name: string, labels: Record<string, string>) =>
      (sampleValue(after, name, labels) ?? 0) - (sampleValue(before.families, name, labels) ?? 0)
    expect(delta("weft_requests_total", { model: "sim", endpoint: "/v1/chat/completions", status: "200", tenant: "" })).toBe(1)
    expect(delta("weft_requests_total", { model: "sim", endpoint: "/v1/chat/completions", status: "400", tenant: "" })).toBe(1)
    expect(delta("weft_requests_total", { model: "sim", endpoint: "unmatched", status: "404", tenant: "" })).toBe(1)
    expect(delta("weft_requests_total", { model: "sim", endpoint: "/metrics", status: "200", tenant: "" })).toBe(1)
    expect(delta("weft_generations_total", { model: "sim", outcome: "completed" })).toBe(1)
    expect(delta("weft_prompt_tokens_total", { model: "sim", tenant: "" })).toBe(usage.prompt_tokens)
    expect(delta("weft_generation_tokens_total", { model: "sim", tenant: "" })).toBe(usage.completion_tokens)
    expect(delta("weft_time_to_first_token_seconds_count", { model: "sim" })).toBe(1)
    expect(delta("weft_inter_token_latency_seconds_count", { model: "sim" })).toBe(usage.completion_tokens - 1)
    expect(sampleValue(after, "weft_slots_capacity", { model: "sim" })).toBe(2)
    expect(sampleValue(after, "weft_slots_free", { model: "sim" })).toBe(2)
    expect(sampleValue(after, "weft_process_resident_memory_bytes")).toBeGreaterThan(0)
    expect(sampleValue(after, "weft_process_heap_used_bytes")).toBeGreaterThan(0)
    expect(sampleValue(after, "weft_process_event_loop_lag_seconds")).toBeGreaterThanOrEqual(0)
  })

  it("answers /admin/stats with percentiles, rates, slot, queue and KV state", async () => {
    for (let i = 0; i < 3; i++) expect((await chat(server, "the same prefix every time")).status).toBe(200)
    const response = await fetch(`${server.url}/admin/stats`)
    expect(response.status).toBe(200)
    expect(response.headers.get("x-request-id")).toMatch(/^req_/)
    const stats = (await response.json()) as Record<string, any>
    expect(stats).toMatchObject({
      status: "ok",
      model: "sim",
      windowSeconds: 300,
      requests: { running: 0, queued: 0, queueLimit: 64, draining: false },
      slots: { total: 2, free: 2, quarantined: 0 },
      kvCache: { capacityTokens: 2 * 4096 }
    })
    expect(stats.requests.finished.completed).toBeGreaterThanOrEqual(3)
    for (const name of ["queueWait", "timeToFirstToken", "interToken", "total"]) {
      expect(stats.latencyMs[name].count, name).toBeGreaterThan(0)
      expect(stats.latencyMs[name].p50, name).toBeTypeOf("number")
      expect(stats.latencyMs[name].p99, name).toBeGreaterThanOrEqual(stats.latencyMs[name].p50)
    }
    expect(stats.throughput.generationTokensPerSecond).toBeGreaterThanOrEqual(0)
    // The repeated prompt reused its prefix from the cache.
    expect(stats.prefixCache.hits).toBeGreaterThan(0)
    expect(stats.prefixCache.hitRate).toBeCloseTo(stats.prefixCache.hits / stats.prefixCache.lookups)
    expect(stats.kvCache.usageRatio).toBeCloseTo(stats.kvCache.tokens / (2 * 4096))
    expect(stats.process.residentMemoryBytes).toBeGreaterThan(0)
  })

  it("logs one JSON line per finished request, without API keys or prompt text", async () => {
    const response = await chat(server, secretPrompt, {
      headers: { authorization: `Bearer ${apiKey}`, "x-api-key": apiKey }
    })
    expect(response.status).toBe(200)
    const requestId = response.headers.get("x-request-id")!
    const usage = ((await response.json()) as { usage: Usage }).usage
    // Refused before any generation: the body (with the secret) is not echoed into the log.
    const refused = await postJson(server, `/v1/chat/completions?api_key=${apiKey}`, { model: "sim", messages: secretPrompt }, {
      headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` }
    })
    expect(refused.status).toBe(400)

    const line = await waitForLine(lines, (entry) => entry.msg === "request completed" && entry.requestId === requestId)
    expect(line).toMatchObject({
      level: "info",
      model: "sim",
      status: "completed",
      finishReason: "length",
      promptTokens: usage.prompt_tokens,
      completionTokens: usage.completion_tokens,
      method: "POST",
      path: "/v1/chat/completions"
    })
    expect(line.traceId).toMatch(/^[0-9a-f]{32}$/)
    expect(line.generationId).toMatch(/^chatcmpl-/)
    for (const key of ["queueMs", "ttftMs", "totalMs"]) expect(line[key], key).toBeTypeOf("number")
    const refusedLine = await waitForLine(lines, (entry) => entry.msg === "request refused" && entry.requestId === refused.headers.get("x-request-id"))
    expect(refusedLine).toMatchObject({ status: 400, path: "/v1/chat/completions", error: "InvalidParam" })

    expect(lines.length).toBeGreaterThan(0)
    for (const text of lines) {
      const entry = JSON.parse(text) as Record<string, unknown>
      expect(entry.time).toBeTypeOf("string")
      expect(entry.level).toBeTypeOf("string")
      expect(text).not.toContain(apiKey)
      expect(text).not.toContain("TANGERINE")
    }
  })

  it("parents the request's spans on an incoming W3C traceparent", async () => {
    const traceId = "0af7651916cd43dd8448eb211c80319c"
    const parentSpanId = "b7ad6b7169203331"
    const response = await chat(server, "traced", { headers: { traceparent: `00-${traceId}-${parentSpanId}-01` } })
    expect(response.status).toBe(200)
    await response.json()
    const requestId = response.headers.get("x-request-id")

    const traced = spans.filter((span) => span.traceId === traceId)
    const byName = (name: string) => {
      const span = traced.find((candidate) => candidate.name === name)
      if (span === undefined) throw new Error(`no ${name} span; traced: ${traced.map((candidate) => candidate.name).join(", ")}`)
      return span
    }
    const root = byName("http.server POST")
    expect(root.parent._tag).toBe("Some")
    const external = root.parent._tag === "Some" ? root.parent.value : undefined
    expect(external).toMatchObject({ _tag: "ExternalSpan", traceId, spanId: parentSpanId })

    const ancestors = (span: (typeof traced)[number]) => {
      const names: Array<string> = []
      let current: Option.Option<Tracer.AnySpan> = span.parent
      while (Option.isSome(current)) {
        const parent: Tracer.AnySpan = current.value
        names.push(parent._tag === "Span" ? parent.name : `external:${parent.spanId}`)
        current = parent._tag === "Span" ? parent.parent : Option.none()
      }
      return names
    }
    const generation = byName("RequestScheduler.generation")
    expect(ancestors(generation)).toEqual(["http.chatCompletions", "http.server POST", `external:${parentSpanId}`])
    for (const stage of ["RequestScheduler.queueWait", "SeqPool.acquire", "RequestScheduler.prefill", "RequestScheduler.decode"]) {
      expect(ancestors(byName(stage))[0], stage).toBe("RequestScheduler.generation")
    }
    const startOf = (name: string) => byName(name).status.startTime
    expect(startOf("RequestScheduler.queueWait")).toBeLessThanOrEqual(startOf("SeqPool.acquire"))
    expect(startOf("SeqPool.acquire")).toBeLessThanOrEqual(startOf("RequestScheduler.prefill"))
    expect(startOf("RequestScheduler.prefill")).toBeLessThanOrEqual(startOf("RequestScheduler.decode"))

    const line = await waitForLine(lines, (entry) => entry.msg === "request completed" && entry.requestId === requestId)
    expect(line.traceId).toBe(traceId)
  })
})

describe("request log with --log-text", () => {
  it("adds prompt and completion text when asked, still never the API key; start-up and shutdown lines", async () => {
    const lines: Array<string> = []
    const server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 4096, tokenLatency: 1 }), {
      logText: true,
      observability: JsonLogger.layer({ level: "info", format: "json", write: (line) => lines.push(line) })
    })
    try {
      const response = await chat(server, secretPrompt, { headers: { authorization: `Bearer ${apiKey}` } })
      expect(response.status).toBe(200)
      const requestId = response.headers.get("x-request-id")
      const line = await waitForLine(lines, (entry) => entry.msg === "request completed" && entry.requestId === requestId)
      expect(line.promptText).toContain(secretPrompt)
      expect(line.completionText).toBeTypeOf("string")
      await waitForLine(lines, (entry) => entry.msg === "listening")
      await waitForLine(lines, (entry) => entry.msg === "engine ready" && entry.model === "sim")
    } finally {
      await server.close()
    }
    await waitForLine(lines, (entry) => entry.msg === "shutting down")
    await waitForLine(lines, (entry) => entry.msg === "shut down")
    expect(lines.some((line) => line.includes(apiKey))).toBe(false)
    // At info level, the per-response debug lines are not written.
    expect(lines.some((line) => (JSON.parse(line) as { level: string }).level === "debug")).toBe(false)
  })
})
