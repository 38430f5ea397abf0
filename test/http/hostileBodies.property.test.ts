import { FastCheck as fc } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { hostileChatBody, hostileCompletionBody, hostileLimits, normalChatBody, stringifyDeep } from "../support/hostileBodies.js"
import type { HostileLimits } from "../support/hostileBodies.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { postJson, sseData, startServer, waitForHealth } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

// Random hostile JSON bodies against the real HTTP server: none may get a 5xx, and none may leave a slot taken.
// The seed is fixed so CI is stable; WEFT_PROPERTY_SEED explores others, WEFT_PROPERTY_RUNS_SCALE scales the run
// count, WEFT_PROPERTY_LOG=1 prints every body (abbreviated) and its answer.
// WEFT_PROPERTY_MAX_DEPTH / WEFT_PROPERTY_MAX_STRING turn the generators down to look past one known failure.
const seed = Number(process.env["WEFT_PROPERTY_SEED"] ?? 19)
const limitsFrom = (defaults: HostileLimits): HostileLimits => ({
  ...defaults,
  maxDepth: Number(process.env["WEFT_PROPERTY_MAX_DEPTH"] ?? defaults.maxDepth),
  maxStringLength: Math.min(defaults.maxStringLength, Number(process.env["WEFT_PROPERTY_MAX_STRING"] ?? defaults.maxStringLength))
})
const runs = (base: number) => Math.max(1, Math.round(base * Number(process.env["WEFT_PROPERTY_RUNS_SCALE"] ?? 1)))

/** A request that takes longer has hung (a wedged engine or a stuck slot): that fails the property too. */
const requestTimeoutMs = 10_000

interface Exchange {
  readonly status: number
  readonly text: string
}

/** Sends `body` and reads the whole answer (a stream to its end). */
const send = async (server: TestServer, path: string, body: unknown): Promise<Exchange> => {
  const response = await postJson(server, path, stringifyDeep(body), { signal: AbortSignal.timeout(requestTimeoutMs) })
  return { status: response.status, text: await response.text() }
}

/** The `error` objects a 200 stream carried in-band. */
const inBandErrors = (exchange: Exchange): Array<unknown> =>
  exchange.status === 200 && exchange.text.startsWith("data: ")
    ? sseData(exchange.text).flatMap((data) => {
      if (data === "[DONE]") return []
      const frame = JSON.parse(data) as { error?: unknown }
      return frame.error === undefined ? [] : [frame.error]
    })
    : []

/** The property: the answer is not a 5xx (nor a stream that failed in-band), every slot is free after it, and a normal request is served. */
const survives = async (server: TestServer, model: string, path: string, body: unknown) => {
  if (process.env["WEFT_PROPERTY_LOG"]) console.log("BODY", path, JSON.stringify(abbreviate(body)).slice(0, 600))
  const exchange = await send(server, path, body)
  if (process.env["WEFT_PROPERTY_LOG"]) console.log("STATUS", path, exchange.status, exchange.text.slice(0, 160).replaceAll("\n", " "))
  const summary = `${exchange.status} ${exchange.text.slice(0, 300)}`
  expect(exchange.status, summary).toBeLessThan(500)
  if (exchange.status >= 400) {
    const { error } = JSON.parse(exchange.text) as { error: { message: string } }
    expect(error, summary).toMatchObject({ message: expect.any(String), type: expect.any(String) })
    // Errors quote at most a short prefix of a bad value, never the value.
    expect(error.message.length, summary).toBeLessThan(2048)
  }
  expect(inBandErrors(exchange), summary).toEqual([])
  await waitForHealth(server, (health) => health.slots.free === health.slots.total && health.queue.length === 0, 200)
  const normal = await send(server, "/v1/chat/completions", normalChatBody(model))
  expect(normal.status, normal.text.slice(0, 300)).toBe(200)
}

/** How deep `value` nests, counted without recursion (a counterexample may be thousands of levels deep). */
const nestingDepth = (value: unknown): number => {
  let deepest = 0
  const pending: Array<[unknown, number]> = [[value, 0]]
  while (pending.length > 0) {
    const [inner, depth] = pending.pop()!
    deepest = Math.max(deepest, depth)
    if (typeof inner === "object" && inner !== null) for (const child of Object.values(inner)) pending.push([child, depth + 1])
  }
  return deepest
}

/** fast-check's counterexamples can hold megabytes and thousands of levels: report their shape, not their bytes. */
const abbreviate = (value: unknown, depth = 0): unknown => {
  if (typeof value === "string") return value.length > 60 ? `${JSON.stringify(value.slice(0, 20))}…(${value.length} chars)` : value
  if (typeof value !== "object" || value === null) return value
  if (depth >= 8) return `…(${nestingDepth(value)} more levels)`
  if (Array.isArray(value)) return value.map((item) => abbreviate(item, depth + 1))
  return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, abbreviate(item, depth + 1)]))
}

/** Arrays nested `depth` deep. */
const nestedArrays = (depth: number): unknown => {
  let value: unknown = 0
  for (let level = 0; level < depth; level++) value = [value]
  return value
}

const jsonSchemaFormat = (schema: unknown) => ({ type: "json_schema", json_schema: { name: "x", schema } })

/**
 * Bodies that always run before the random ones: the inputs issue 19 reports, and the counterexamples this property
 * found (shrunk), so each stays covered whatever the seed.
 */
const knownBodies = (model: string) => {
  const chat = (extra: object) => ({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 4, ...extra })
  const text = (extra: object) => ({ model, prompt: "hi", max_tokens: 4, ...extra })
  const schemas = [
    { type: "array", items: { type: "integer" }, minItems: 1200 },
    { type: "string", minLength: 1100 },
    { type: "object", properties: { "na\u0000me": { type: "string" } }, required: ["na\u0000me"] },
    { enum: ["\u0000"] },
    { const: "nul\u0000" },
    { $ref: "#/$defs/a", $defs: { a: { $ref: "#/$defs/a" } } },
    { $ref: "#/$defs/a", $defs: { a: { $ref: "#/$defs/b" }, b: { $ref: "#/$defs/a" } } },
    // Found: a cycle under `items`, whose `#/$defs/a` does not resolve from the root.
    { type: "array", items: { $ref: "#/$defs/a", $defs: { a: { $ref: "#/$defs/a" } } } }
  ]
  return {
    "/v1/chat/completions": [
      // Found: arrays ~2,300 deep in a checked field overflow the stack while the error message is formatted.
      chat({ ignore_eos: nestedArrays(2400) }),
      chat({ temperature: "x".repeat(3_200_000) }),
      // Found: a wrong-typed value ~500 levels deep is echoed whole in the message.
      chat({ model: { a: nestedArrays(500) } }),
      ...schemas.flatMap((schema) => [chat({ response_format: jsonSchemaFormat(schema) }), chat({ response_format: jsonSchemaFormat(schema), stream: true })])
    ],
    "/v1/completions": [
      text({ ignore_eos: nestedArrays(2400) }),
      // Found: json_object with ignore_eos (seed 1 hits it on the tiny model; other seeds do about half the time).
      // node-llama-cpp throws "Failed to accept token in sampler: Unexpected empty grammar stack" outside the step,
      // and the request never answers and keeps its slot even after the client goes.
      { model, prompt: "𡿙𭎛򣵷", max_tokens: 12, response_format: { type: "json_object" }, ignore_eos: true, seed: 1 },
      ...schemas.map((schema) => text({ response_format: jsonSchemaFormat(schema) }))
    ]
  }
}

const checkBodies = (getServer: () => TestServer, model: string, limits: HostileLimits, numRuns: number) => {
  const known = knownBodies(model)
  const cases = [
    ["/v1/chat/completions", hostileChatBody(limits, model)],
    ["/v1/completions", hostileCompletionBody(limits, model)]
  ] as const
  for (const [path, bodies] of cases) {
    it(`${path}: no hostile body gets a 5xx or leaves a slot taken`, async () => {
      await fc.assert(
        fc.asyncProperty(bodies, (body) => survives(getServer(), model, path, body)),
        { seed, numRuns, examples: known[path].map((body): [unknown] => [body]), interruptAfterTimeLimit: 50_000, reporter: (details) => {
          if (details.failed) {
            throw new Error(
              `seed ${details.seed}, path ${details.counterexamplePath}, after ${details.numShrinks} shrinks:\n` +
                `${JSON.stringify(abbreviate(details.counterexample?.[0]))}\n${(details.errorInstance as Error)?.stack ?? String(details.errorInstance)}`
            )
          }
        } }
      )
    }, 90_000)
  }
}

describe("hostile bodies on SimBackend", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 2048, tokenLatency: 0 }), { maxBodyBytes: 8 * 1024 * 1024 })
  })
  afterAll(() => server.close())
  checkBodies(() => server, "sim", limitsFrom(hostileLimits), runs(100))
})

// Grammars are built only by the real backend, so schema failures show only here. Strings stay short: long ones
// on the real tokenizer are the event-loop stall of issue 19's first finding, tested on their own.
describe("hostile bodies on the tiny model", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 512 }))
  })
  afterAll(() => server.close())
  checkBodies(() => server, tinyModelId, limitsFrom({ maxStringLength: 2000, maxDepth: 5000, maxSchemaCount: 5000 }), runs(50))
})
