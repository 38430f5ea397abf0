import { FastCheck as fc } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { parsePrometheusText, sampleValue } from "../support/prometheusText.js"
import { postJson, startServer, waitForHealth } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

// JSON schemas that llama.cpp's grammar parser cannot take are refused with 400 before admission (finding 5), and
// the grammar cache keyed by schemas stays bounded (finding 2), over HTTP against the tiny model.

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

const schemaParam = "response_format.json_schema.schema"

const chatWith = (schema: unknown, extra: Record<string, unknown> = {}, model = tinyModelId) => ({
  model,
  messages: [{ role: "user", content: "Hello" }],
  max_tokens: 1,
  response_format: { type: "json_schema", json_schema: { name: "s", schema } },
  ...extra
})

const arrayOf = (extra: Record<string, unknown>) => ({ type: "array", items: { type: "string" }, ...extra })
const property = (schema: unknown) => ({ type: "object", properties: { x: schema }, required: ["x"] })

/**
 * Schemas the grammar parser rejects, each with the param its 400 must name, and its code when not
 * `invalid_json_schema` (a NUL is refused in any string of any body, before the schema is looked at).
 */
const breaking: ReadonlyArray<readonly [string, unknown, string | RegExp, string?]> = [
  ["minItems above the repetition limit", property(arrayOf({ minItems: 1100 })), `${schemaParam}.properties.x.minItems`],
  ["minLength above the repetition limit", property({ type: "string", minLength: 1001 }), `${schemaParam}.properties.x.minLength`],
  ["minProperties above the repetition limit", { type: "object", additionalProperties: { type: "string" }, minProperties: 5000 }, `${schemaParam}.minProperties`],
  ["a NUL character in a property name", { type: "object", properties: { "a\u0000b": { type: "string" } } }, `${schemaParam}.properties`, "invalid_text"],
  ["a NUL character in an enum value", property({ enum: ["ok", "a\u0000b"] }), `${schemaParam}.properties.x.enum[1]`, "invalid_text"],
  ["a NUL character in a const value", property({ const: "a\u0000b" }), `${schemaParam}.properties.x.const`, "invalid_text"],
  ["a $ref cycle a → a", { $defs: { a: { $ref: "#/$defs/a" } }, $ref: "#/$defs/a" }, `${schemaParam}.$defs.a.$ref`],
  ["a $ref cycle a → b → a", { $defs: { a: { $ref: "#/$defs/b" }, b: { $ref: "#/$defs/a" } }, $ref: "#/$defs/a" }, /\.\$defs\.[ab]\.\$ref$/],
  [
    "a $ref cycle through anyOf with nothing consumed first",
    { $defs: { a: { anyOf: [{ $ref: "#/$defs/a" }, { type: "string" }] } }, $ref: "#/$defs/a" },
    `${schemaParam}.$defs.a.anyOf[0].$ref`
  ],
  // Passes every static check; only building the grammar finds it (minLength 1000 builds alone, or nested in an
  // object, but not at the root with this maxLength).
  ["a repetition llama.cpp refuses that no static rule names", { type: "string", minLength: 1000, maxLength: 2000 }, schemaParam]
]

const scrape = async (server: TestServer) => parsePrometheusText(await (await fetch(`${server.url}/metrics`)).text())

describe("JSON schema grammars against the tiny model", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(tinyBackend())
  })
  afterAll(() => server?.close())

  for (const [name, schema, param, code = "invalid_json_schema"] of breaking) {
    for (const stream of [false, true]) {
      it(`refuses ${name} with 400 ${code} before admission${stream ? " (streaming)" : ""}`, async () => {
        const response = await postJson(server, "/v1/chat/completions", chatWith(schema, { stream }))
        expect(response.status).toBe(400)
        const body = (await response.json()) as ErrorBody
        expect(body.error.code).toBe(code)
        expect(body.error.type).toBe("invalid_request_error")
        if (typeof param === "string") expect(body.error.param).toBe(param)
        else expect(body.error.param).toMatch(param)
        expect(body.error.message).toContain(body.error.param)
        await waitForHealth(server, (health) => health.slots.free === 4)
      })
    }
  }

  it("still serves schemas at the limits", async () => {
    for (const schema of [property(arrayOf({ minItems: 990 })), property({ type: "string", minLength: 1000 }), property({ enum: ["a\u0001b"] })]) {
      const response = await postJson(server, "/v1/chat/completions", chatWith(schema))
      expect(response.status, JSON.stringify(schema)).toBe(200)
    }
  })

  it("never answers a random schema (breaking keywords included) with a 5xx, and never leaves a slot taken", async () => {
    const count = fc.oneof(fc.nat({ max: 3 }), fc.integer({ min: 990, max: 1010 }), fc.integer({ min: 1000, max: 100000 }))
    const text = fc.oneof(fc.string({ maxLength: 4 }), fc.constantFrom("a\u0000b", "\u0000", "ok"))
    const leaf = fc.oneof(
      fc.record({ type: fc.constant("string"), minLength: fc.option(count, { nil: undefined }), maxLength: fc.option(count, { nil: undefined }) }, { requiredKeys: ["type"] }),
      fc.record({ enum: fc.array(fc.oneof(text, fc.integer(), fc.constant(null)), { minLength: 1, maxLength: 3 }) }),
      fc.record({ const: text }),
      fc.record({ $ref: fc.constantFrom("#/$defs/a", "#/$defs/b", "#/$defs/missing") }),
      fc.record({ type: fc.constantFrom("integer", "number", "boolean", "null", "what") })
    )
    const schema = fc.letrec<{ node: unknown }>((tie) => ({
      node: fc.oneof(
        { depthSize: "small", withCrossShrink: true },
        leaf,
        fc.record({
          type: fc.constant("array"),
          items: tie("node"),
          minItems: fc.option(count, { nil: undefined }),
          maxItems: fc.option(count, { nil: undefined })
        }, { requiredKeys: ["type", "items"] }),
        fc.record({
          type: fc.constant("object"),
          properties: fc.dictionary(text, tie("node"), { maxKeys: 3 }),
          minProperties: fc.option(count, { nil: undefined })
        }, { requiredKeys: ["type", "properties"] }),
        fc.record({ anyOf: fc.array(tie("node"), { minLength: 1, maxLength: 3 }) })
      )
    }))
    const defs = fc.record({ a: schema.node, b: schema.node })
    const root = fc.tuple(schema.node, fc.option(defs, { nil: undefined })).map(([node, $defs]) =>
      $defs === undefined || typeof node !== "object" || node === null ? node : { ...node, $defs })

    await fc.assert(
      fc.asyncProperty(root, fc.boolean(), async (schema, stream) => {
        const response = await postJson(server, "/v1/chat/completions", chatWith(schema, { stream }))
        const text = await response.text()
        expect(response.status, text).toBeLessThan(500)
        if (response.status === 200 && stream) expect(text).not.toContain("\"error\"")
        if (response.status !== 200) expect((JSON.parse(text) as ErrorBody).error.code).toBeTruthy()
      }),
      { numRuns: 200 }
    )
    await waitForHealth(server, (health) => health.slots.free === 4)
  })
})

describe("the grammar cache", () => {
  const model = "grammar-lru"
  const maxEntries = 4
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(tinyBackend({ modelId: model, grammarCache: { maxEntries, maxBytes: 64 * 1024 * 1024 } }))
  })
  afterAll(() => server?.close())

  const distinct = (index: number) => property({ type: "string", description: `schema ${index}` , maxLength: index + 1 })

  it("keeps at most its entry bound of distinct schemas, counting evictions, hits and misses in /metrics", async () => {
    const value = (families: Map<string, unknown>, name: string) => sampleValue(families as never, name, { model }) ?? 0
    const before = await scrape(server)
    for (let index = 0; index < maxEntries + 3; index++) {
      expect((await postJson(server, "/v1/chat/completions", chatWith(distinct(index), {}, model))).status).toBe(200)
    }
    // The most recent schema again: a hit.
    expect((await postJson(server, "/v1/chat/completions", chatWith(distinct(maxEntries + 2), {}, model))).status).toBe(200)
    const after = await scrape(server)
    for (const family of ["weft_grammar_cache_entries", "weft_grammar_cache_bytes", "weft_grammar_cache_evictions_total", "weft_grammar_cache_hits_total", "weft_grammar_cache_misses_total"]) {
      expect(after.get(family)?.help, family).toBeTruthy()
    }
    expect(value(after, "weft_grammar_cache_entries")).toBe(maxEntries)
    expect(value(after, "weft_grammar_cache_bytes")).toBeGreaterThan(0)
    expect(value(after, "weft_grammar_cache_evictions_total") - value(before, "weft_grammar_cache_evictions_total")).toBe(3)
    expect(value(after, "weft_grammar_cache_misses_total") - value(before, "weft_grammar_cache_misses_total")).toBe(maxEntries + 3)
    // One hit at check time and one when the generation starts, for each of the requests.
    expect(value(after, "weft_grammar_cache_hits_total") - value(before, "weft_grammar_cache_hits_total")).toBe(maxEntries + 4 + 1)
  })
})

describe("the grammar cache's byte bound", () => {
  const model = "grammar-lru-bytes"
  let server: TestServer

  beforeAll(async () => {
    // Room for about two small grammars.
    server = await startServer(tinyBackend({ modelId: model, grammarCache: { maxEntries: 1000, maxBytes: 4000 } }))
  })
  afterAll(() => server?.close())

  it("evicts by estimated bytes too", async () => {
    for (let index = 0; index < 10; index++) {
      const schema = property({ type: "string", description: `schema ${index}`, maxLength: index + 1 })
      expect((await postJson(server, "/v1/chat/completions", chatWith(schema, {}, model))).status).toBe(200)
    }
    const families = await scrape(server)
    expect(sampleValue(families, "weft_grammar_cache_bytes", { model })).toBeLessThanOrEqual(4000)
    expect(sampleValue(families, "weft_grammar_cache_entries", { model })).toBeLessThan(10)
    expect(sampleValue(families, "weft_grammar_cache_evictions_total", { model })).toBeGreaterThan(0)
  })
})
