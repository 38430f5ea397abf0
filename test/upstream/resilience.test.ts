import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { ModelsConfig } from "../../src/config/ModelsConfig.js"
import { SimBackend } from "../../src/engine/SimBackend.js"
import type { DeploymentView } from "../../src/upstream/ModelRouter.js"
import { startFaultUpstream } from "../support/faultUpstream.js"
import type { Fault, FaultLogEntry, FaultUpstream } from "../support/faultUpstream.js"
import { parsePrometheusText } from "../support/prometheusText.js"
import { postJson, sseData, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const sim = () => SimBackend.layer({ parallel: 8, contextSize: 256, tokenLatency: 1 })

/** mulberry32: the fault plan is the same on every run. */
const seeded = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

/** Faults that strike before Weft has sent the client anything (a JSON answer is read whole first, so a body cut half-way is one too). */
const faultsBeforeFirstByte = (stream: boolean): ReadonlyArray<Fault> => [
  { _tag: "Status", status: 500 },
  { _tag: "Status", status: 503 },
  // Test-sized: Retry-After in a tenth of a second.
  { _tag: "Status", status: 429, retryAfter: "0.1" },
  { _tag: "ResetBeforeHeaders" },
  { _tag: "ResetAfterHeaders" },
  // Longer than the first-byte timeout: Weft gives up on it first.
  { _tag: "Stall", ms: 30_000 },
  ...(stream ? [] : [{ _tag: "ResetMidBody" } as const])
]

/** The config the tests route with: breaker and backoff timings shrunk so a run takes seconds. */
const modelsFor = (flaky: string, steady: string): ModelsConfig => ({
  chat: {
    deployments: [
      { url: flaky, model: "sim", name: "flaky", timeouts: { firstByteMs: 1_500, totalMs: 30_000 }, pool: { connections: 16 } },
      { url: steady, model: "sim", name: "steady", timeouts: { firstByteMs: 20_000, totalMs: 30_000 }, pool: { connections: 16 } }
    ],
    routing: "round-robin",
    retry: { retries: 4, baseDelayMs: 5, maxDelayMs: 100 },
    breaker: { failures: 3, failureRate: 0.6, windowMs: 1_000, minRequests: 10, cooldownMs: 100, halfOpenProbes: 1 }
  }
})

interface Answer {
  /** When the client got the response's first byte (`performance.now()`, the clock the fault upstreams log with). */
  readonly firstByteAt: number
  readonly status: number
  readonly text: string
  readonly error: unknown
  readonly whole: boolean
}

const ask = async (server: TestServer, index: number, stream: boolean, model = "chat"): Promise<Answer> => {
  const response = await postJson(server, "/v1/chat/completions", {
    model,
    messages: [{ role: "user", content: `question ${index % 10}` }],
    max_tokens: 8,
    seed: 11,
    stream
  }, { headers: { "content-type": "application/json", "x-request-id": `run-${index}` } })
  const firstByteAt = performance.now()
  if (!stream) {
    const body = await response.json() as { choices?: Array<{ message: { content: string }; finish_reason: string }>; error?: unknown }
    return { firstByteAt, status: response.status, text: body.choices?.[0]?.message.content ?? "", error: body.error, whole: body.choices?.[0]?.finish_reason === "length" }
  }
  const frames = sseData(await response.text())
  let text = ""
  let error: unknown
  let finished = false
  for (const frame of frames.slice(0, -1)) {
    const chunk = JSON.parse(frame) as { error?: unknown; choices: Array<{ delta: { content?: string }; finish_reason: string | null }> }
    if (chunk.error !== undefined) error = chunk.error
    text += chunk.choices?.[0]?.delta.content ?? ""
    if (chunk.choices?.[0]?.finish_reason === "length") finished = true
  }
  return { firstByteAt, status: response.status, text, error, whole: finished && frames.at(-1) === "[DONE]" }
}

/** Every attempt of each request, across upstreams, in the order they arrived. */
const attemptsById = (...logs: ReadonlyArray<ReadonlyArray<FaultLogEntry>>) => {
  const byId = new Map<string, Array<FaultLogEntry>>()
  for (const entry of logs.flat()) byId.set(entry.requestId, [...(byId.get(entry.requestId) ?? []), entry])
  for (const attempts of byId.values()) attempts.sort((a, b) => a.at - b.at)
  return byId
}

const upstreamsView = async (server: TestServer) =>
  (await (await fetch(`${server.url}/admin/upstreams`)).json() as { deployments: Array<DeploymentView> }).deployments

describe("500 mixed requests with 30% faults on one of two deployments", () => {
  let a: TestServer
  let b: TestServer
  let flaky: FaultUpstream
  let steady: FaultUpstream
  let front: TestServer

  beforeAll(async () => {
    a = await startServer(sim())
    b = await startServer(sim())
    const random = seeded(13)
    flaky = await startFaultUpstream(a.url, ({ stream }) => {
      if (random() >= 0.3) return { _tag: "Pass" }
      const faults = faultsBeforeFirstByte(stream)
      return faults[Math.floor(random() * faults.length)]!
    })
    // No faults: it only watches, so every attempt of a request is seen by one of the two.
    steady = await startFaultUpstream(b.url, () => ({ _tag: "Pass" }))
    front = await startServer(sim(), { models: modelsFor(flaky.baseURL, steady.baseURL) })
  })
  afterAll(async () => {
    await front?.close()
    await Promise.all([flaky?.close(), steady?.close()])
    await Promise.all([a?.close(), b?.close()])
  })

  it("answers every request whole, opens and closes the breaker, and never retries after the first byte", async () => {
    const expected = await Promise.all(Array.from({ length: 10 }, (_, index) => ask(a, index, false, "sim").then((answer) => answer.text)))
    // Asked of Weft A directly: its model is `sim`.
    expect(expected.every((text) => text.length > 0)).toBe(true)

    const total = 500
    const answers: Array<Answer> = new Array(total)
    let next = 0
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < total) {
        const index = next++
        answers[index] = await ask(front, index, index % 2 === 1)
      }
    }))

    const failures = answers.flatMap((answer, index) => answer.status === 200 && answer.error === undefined && answer.whole ? [] : [{ index, ...answer }])
    expect(failures).toEqual([])
    answers.forEach((answer, index) => expect(answer.text).toBe(expected[index % 10]))

    // From the upstreams' side: no attempt of a request arrived after the client had its answer's first byte.
    const attempts = attemptsById(flaky.log, steady.log)
    answers.forEach((answer, index) => {
      const list = attempts.get(`run-${index}`) ?? []
      expect(list.length).toBeGreaterThan(0)
      expect(list.filter((entry) => entry.at > answer.firstByteAt), `run-${index}`).toEqual([])
    })
    const injected = flaky.log.filter((entry) => entry.fault !== "Pass").length
    expect(injected).toBeGreaterThan(0)

    const families = parsePrometheusText(await (await fetch(`${front.url}/metrics`)).text())
    const samplesOf = (name: string) => families.get(name)?.samples ?? []
    const transitions = (to: string) =>
      samplesOf("weft_upstream_breaker_transitions_total").filter((sample) => sample.labels["deployment"] === "flaky" && sample.labels["to"] === to)
        .reduce((sum, sample) => sum + sample.value, 0)
    expect(transitions("open")).toBeGreaterThan(0)
    expect(transitions("closed")).toBeGreaterThan(0)
    const retries = samplesOf("weft_upstream_retries_total")

    const view = await upstreamsView(front)
    const steadyView = view.find((row) => row.deployment === "steady")!
    const flakyView = view.find((row) => row.deployment === "flaky")!
    // Keep-alive: a steady upstream's requests go out on connections opened for earlier ones.
    expect(steadyView.pool!.reuseRatio).toBeGreaterThan(0.9)
    console.log(JSON.stringify({
      requests: total,
      injectedFaults: injected,
      attempts: { flaky: flaky.log.length, steady: steady.log.length },
      breaker: { opened: transitions("open"), halfOpened: transitions("half_open"), closed: transitions("closed") },
      retries: Object.fromEntries(retries.map((sample) => [`${sample.labels["deployment"]}/${sample.labels["reason"]}`, sample.value])),
      flaky: flakyView,
      steady: steadyView
    }, null, 2))
  }, 120_000)
})

describe("fallbacks, exhaustion and streams cut after their first byte", () => {
  let b: TestServer
  let broken: FaultUpstream
  let halfway: FaultUpstream
  let watcher: FaultUpstream
  let busy: FaultUpstream
  let front: TestServer

  beforeAll(async () => {
    b = await startServer(sim())
    broken = await startFaultUpstream(b.url, () => ({ _tag: "Status", status: 503 }))
    halfway = await startFaultUpstream(b.url, ({ stream }) => (stream ? { _tag: "CloseStreamAfter", frames: 3 } : { _tag: "Pass" }))
    watcher = await startFaultUpstream(b.url, () => ({ _tag: "Pass" }))
    busy = await startFaultUpstream(b.url, () => ({ _tag: "Status", status: 429, retryAfter: "30" }))
    const quick = { retries: 2, baseDelayMs: 1, maxDelayMs: 10 }
    front = await startServer(sim(), {
      models: {
        primary: { deployments: [{ url: broken.baseURL, model: "sim", name: "primary-broken" }], fallbacks: ["backup"], retry: quick },
        backup: { deployments: [{ url: watcher.baseURL, model: "sim", name: "backup-b" }] },
        // Nothing listens on port 9 of this machine: connection refused.
        lonely: { deployments: [{ url: "http://127.0.0.1:9/v1", model: "sim", name: "lonely-nowhere" }], retry: quick },
        busy: { deployments: [{ url: busy.baseURL, model: "sim", name: "busy-429" }], retry: quick },
        // A local deployment (the test server's own engine, registered as `sim`) and an upstream one.
        mixed: { deployments: [{ gguf: "unused.gguf", name: "sim" }, { url: watcher.baseURL, model: "sim", name: "mixed-up" }], retry: quick },
        cut: {
          deployments: [{ url: halfway.baseURL, model: "sim", name: "cut-halfway" }, { url: watcher.baseURL, model: "sim", name: "cut-whole" }],
          routing: "round-robin",
          retry: quick
        }
      }
    })
  })
  afterAll(async () => {
    await front?.close()
    await Promise.all([broken?.close(), halfway?.close(), watcher?.close(), busy?.close()])
    await b?.close()
  })

  it("falls back to the next model when every deployment fails, and says which model answered", async () => {
    const client = new OpenAI({ baseURL: front.baseURL, apiKey: "unused", maxRetries: 0 })
    const completion = await client.chat.completions.create({ model: "primary", messages: [{ role: "user", content: "hi" }], max_tokens: 4 })
    expect(completion.model).toBe("backup")
    expect(completion.usage?.completion_tokens).toBe(4)
    // The first attempt and its two retries, then the fallback.
    expect(broken.log).toHaveLength(3)
  })

  it("answers 503 in OpenAI's shape naming the model when no deployment and no fallback is left", async () => {
    const response = await postJson(front, "/v1/chat/completions", { model: "lonely", messages: [{ role: "user", content: "hi" }] })
    expect(response.status).toBe(503)
    const body = await response.json() as { error: { message: string; type: string; param: string | null; code: string | null } }
    expect(body.error).toMatchObject({ type: "server_error", param: "model", code: "model_unavailable" })
    expect(body.error.message).toContain("`lonely`")
    // The server keeps serving.
    expect((await postJson(front, "/v1/chat/completions", { model: "backup", messages: [{ role: "user", content: "hi" }], max_tokens: 2 })).status).toBe(200)
  })

  it("ends a stream cut after its first byte with an in-band error, and never retries it", async () => {
    const client = new OpenAI({ baseURL: front.baseURL, apiKey: "unused", maxRetries: 0 })
    let failed: unknown
    let seenIds = 0
    // Round-robin: of two requests, one goes to the upstream that cuts streams.
    for (const id of ["cut-1", "cut-2"]) {
      const stream = await client.chat.completions.create(
        { model: "cut", messages: [{ role: "user", content: "hi" }], max_tokens: 12, stream: true },
        { headers: { "x-request-id": id } }
      )
      try {
        for await (const chunk of stream) if (chunk.choices[0]?.delta.content !== undefined) seenIds++
      } catch (error) {
        failed = error
      }
    }
    expect(seenIds).toBeGreaterThan(0)
    expect(String(failed)).toMatch(/ended the stream early/)
    const attempts = attemptsById(halfway.log, watcher.log)
    const cut = [...attempts.entries()].find(([, list]) => list.some((entry) => entry.fault === "CloseStreamAfter"))!
    // The upstream sent frames, the client got them, the stream broke: no second attempt anywhere.
    expect(cut[1]).toHaveLength(1)
    expect(cut[1][0]!.bodyStarted).toBe(true)
  })

  it("answers 429 with Retry-After when every deployment is backing off, sending nothing more to it meanwhile", async () => {
    for (let i = 0; i < 2; i++) {
      const response = await postJson(front, "/v1/chat/completions", { model: "busy", messages: [{ role: "user", content: "hi" }] })
      expect(response.status).toBe(429)
      expect(Number(response.headers.get("retry-after"))).toBeGreaterThan(1)
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe("upstreams_saturated")
    }
    // Its Retry-After is honoured: the second request never reached it.
    expect(busy.log).toHaveLength(1)
  })

  it("balances a model across a local and an upstream deployment, answering as the model either way", async () => {
    const before = watcher.log.length
    const client = new OpenAI({ baseURL: front.baseURL, apiKey: "unused", maxRetries: 0 })
    for (let i = 0; i < 4; i++) {
      const completion = await client.chat.completions.create({ model: "mixed", messages: [{ role: "user", content: "hi" }], max_tokens: 3 })
      expect(completion.model).toBe("mixed")
      expect(completion.usage?.completion_tokens).toBe(3)
    }
    expect(watcher.log.length - before).toBe(2)
    const rows = (await (await fetch(`${front.url}/admin/upstreams`)).json() as { deployments: Array<DeploymentView> }).deployments
    expect(rows.filter((row) => row.model === "mixed").map((row) => [row.deployment, row.kind, row.successes])).toEqual([["sim", "local", 2], ["mixed-up", "upstream", 2]])
    const models = (await (await fetch(`${front.url}/v1/models`)).json() as { data: Array<{ id: string }> }).data.map((model) => model.id)
    expect(models).toEqual(expect.arrayContaining(["sim", "primary", "lonely", "cut", "busy", "mixed"]))
    expect(await (await fetch(`${front.url}/v1/models/mixed`)).json()).toMatchObject({ id: "mixed", object: "model" })
  })
})
