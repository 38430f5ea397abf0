import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { health, postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

// Issue 19, item 1: inputs whose tokenization is superlinear in llama.cpp (or simply large) must not stall the event
// loop. The server runs in this process, so the test's own event-loop delay is the server's.

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

const completion = (prompt: string) => ({ model: tinyModelId, prompt, max_tokens: 1 })
const chat = (content: string) => ({ model: tinyModelId, messages: [{ role: "user", content }], max_tokens: 1 })

// Bodies are built before sampling starts: building them is the test's work, not the server's.
const inputs: ReadonlyArray<{ readonly name: string; readonly route: string; readonly body: string }> = [
  { name: "20k × <s> (fits the byte bound, too many tokens)", route: "/v1/completions", body: JSON.stringify(completion("<s>".repeat(20_000))) },
  { name: "40k newlines in a chat message (fits the byte bound)", route: "/v1/chat/completions", body: JSON.stringify(chat("\n".repeat(40_000))) },
  { name: "2^20 newlines in a chat message", route: "/v1/chat/completions", body: JSON.stringify(chat("\n".repeat(2 ** 20))) },
  { name: "2^20 × ÿ", route: "/v1/completions", body: JSON.stringify(completion("ÿ".repeat(2 ** 20))) },
  { name: "2^20 × <s>", route: "/v1/completions", body: JSON.stringify(completion("<s>".repeat(2 ** 20))) },
  { name: "a 3.9 MB prose prompt", route: "/v1/completions", body: JSON.stringify(completion("the quick brown fox jumps over the lazy dog. ".repeat(88_000))) },
  { name: "3k × <s> (fits the context)", route: "/v1/completions", body: JSON.stringify(completion("<s>".repeat(3_000))) }
]

describe("adversarial prompts while a stream runs", () => {
  let server: TestServer
  let streamed = 0
  /** The largest event-loop delay with only the stream running: what this machine shows without any input. */
  let baselineLagMs = 0
  const background = new AbortController()

  beforeAll(async () => {
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 8192, threads: 1 }))
    const response = await postJson(server, "/v1/completions", {
      model: tinyModelId,
      prompt: "once upon a time",
      max_tokens: 1_000_000,
      ignore_eos: true,
      stream: true
    }, { signal: background.signal })
    void (async () => {
      for await (const chunk of response.body!) streamed += new TextDecoder().decode(chunk).split("data: ").length - 1
    })().catch(() => {})
    while (streamed === 0) await new Promise((resolve) => setTimeout(resolve, 10))
    const idle = monitorEventLoopDelay({ resolution: 10 })
    idle.enable()
    await new Promise((resolve) => setTimeout(resolve, 500))
    idle.disable()
    baselineLagMs = idle.max / 1e6
  }, 60_000)
  afterAll(async () => {
    background.abort()
    await server?.close()
  })

  for (const input of inputs) {
    it(`${input.name}: a 4xx or an answer, tokens keep flowing, no event-loop stall`, async () => {
      const lag = monitorEventLoopDelay({ resolution: 10 })
      const healthStatuses: Array<number> = []
      const polls: Array<Promise<unknown>> = []
      const polling = setInterval(() => polls.push(health(server).then((reply) => healthStatuses.push(reply.status))), 50)
      const tokensBefore = streamed
      lag.enable()
      const response = await postJson(server, input.route, input.body)
      const status = response.status
      const text = await response.text()
      // Long enough for the stream and /health to show they went on.
      await new Promise((resolve) => setTimeout(resolve, 300))
      lag.disable()
      clearInterval(polling)
      // Every poll answered before the test ends: one still in flight would fail once the server is closed.
      await Promise.all(polls)

      expect(status === 200 || (status >= 400 && status < 500), `${status} ${text.slice(0, 200)}`).toBe(true)
      if (status !== 200) expect((JSON.parse(text) as ErrorBody).error.code).toBe("context_length_exceeded")
      // At most 100 ms more than the machine's own delay, so a loaded CI machine does not fail it while a stall (seconds
      // before inputs were bounded and tokenized off the main thread) still does.
      expect(lag.max / 1e6, `baseline ${baselineLagMs.toFixed(1)} ms`).toBeLessThan(100 + baselineLagMs)
      expect(streamed).toBeGreaterThan(tokensBefore)
      expect(healthStatuses.length).toBeGreaterThan(0)
      expect(healthStatuses.every((one) => one === 200)).toBe(true)
    }, 60_000)
  }
})
