import { FastCheck as fc } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postJson, startServer, waitForHealth } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

/** Arrays or objects nested `depth` levels around a scalar, as JSON text (too deep for JSON.stringify to write). */
const nestedText = fc.record({ depth: fc.integer({ min: 1, max: 20_000 }), objects: fc.boolean() }).map(({ depth, objects }) =>
  objects ? `${"{\"a\":".repeat(depth)}1${"}".repeat(depth)}` : `${"[".repeat(depth)}1${"]".repeat(depth)}`
)

/** The JSON text of any value a client could put in a field: small ones, deeply nested ones, huge strings. */
const anyValueText: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((value) => JSON.stringify(value)) },
  { weight: 2, arbitrary: nestedText },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 300_000 }).map((length) => `"${"x".repeat(length)}"`) },
  { weight: 2, arbitrary: fc.constantFrom("null", "0", "-1", "1", "2.5", "1e308", "-1e999", "\"\"", "\"sim\"", "true", "[]", "{}") }
)

const fields = [
  "model", "messages", "prompt", "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n",
  "stream", "stream_options", "presence_penalty", "frequency_penalty", "repeat_penalty", "ignore_eos", "priority", "response_format",
  "session_id", "cache_salt", "timeout_queue_ms", "timeout_first_token_ms", "timeout_total_ms", "user", "unknown"
]

const valid: Record<string, string> = { model: "\"sim\"", messages: "[{\"role\": \"user\", \"content\": \"Hi\"}]", prompt: "\"Hi\"", max_tokens: "3" }

/** The text of a valid request with some of its fields replaced by anything, or of anything at all. */
const hostileBody = fc.record({
  endpoint: fc.constantFrom("/v1/chat/completions", "/v1/completions"),
  overrides: fc.dictionary(fc.constantFrom(...fields), anyValueText, { maxKeys: 4 }),
  whole: fc.option(anyValueText, { freq: 8 })
}).map(({ endpoint, overrides, whole }) => ({
  endpoint,
  body: whole ?? `{${Object.entries({ ...valid, ...overrides }).map(([key, value]) => `"${key}": ${value}`).join(", ")}}`
}))

describe("random hostile bodies", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 64, tokenLatency: 1 }))
  })
  afterAll(() => server?.close())

  it("never answer 5xx and never leave a slot taken", async () => {
    await fc.assert(
      fc.asyncProperty(hostileBody, async ({ endpoint, body }) => {
        const response = await postJson(server, endpoint, body)
        const text = await response.text()
        expect({ status: response.status, text: text.slice(0, 300) }).toSatisfy(({ status }: { status: number }) => status < 500)
        // An error quotes at most a short prefix of a value, however long the value.
        if (response.status >= 400) expect(text.length).toBeLessThan(2_000)
        if (response.status >= 400) expect(Object.keys((JSON.parse(text) as { error: object }).error).sort()).toEqual(["code", "message", "param", "type"])
        else expect(text).not.toContain("internal_error")
      }),
      { numRuns: 150 }
    )
    await waitForHealth(server, (health) => health.slots.free === health.slots.total && health.queue.length === 0)
  }, 120_000)
})
