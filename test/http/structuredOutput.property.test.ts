import { FastCheck as fc } from "effect"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { schemaViolation } from "../../src/engine/llama/JsonSchemaValidator.js"
import { startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

// A fixed seed, so CI runs the same cases every time (WEFT_PROPERTY_SEED explores others). Known gap, found with seed
// 887123105: the model can emit byte tokens that llama.cpp's grammar accepts as one character of a string but that are
// not valid UTF-8, so the text holds several U+FFFD and breaks a small `maxLength`; the server then answers 500
// `structured_output_invalid` rather than sending output that does not match the schema.
const propertySeed = Number(process.env["WEFT_PROPERTY_SEED"] ?? 19)

// Finding 7: for random schemas from the supported subset and random seeds, `json_schema` output that ends normally
// parses and validates against the schema (and `json_object` output is a JSON object), over HTTP on the tiny model.

type Schema = Record<string, unknown>

const allFinite = (value: unknown): boolean =>
  typeof value === "number"
    ? Number.isFinite(value)
    : typeof value === "object" && value !== null
    ? Object.values(value).every(allFinite)
    : true

const leaf: fc.Arbitrary<Schema> = fc.oneof(
  fc.constant({ type: "integer" }),
  fc.constant({ type: "number" }),
  fc.constant({ type: "boolean" }),
  fc.constant({ type: "null" }),
  fc.integer({ min: 0, max: 8 }).map((maxLength) => ({ type: "string", maxLength })),
  fc.integer({ min: 1, max: 4 }).map((minLength) => ({ type: "string", minLength, maxLength: minLength + 4 })),
  fc.constantFrom("date", "time", "date-time").map((format) => ({ type: "string", format })),
  fc.uniqueArray(fc.oneof(fc.string({ maxLength: 6 }), fc.integer(), fc.boolean()), { minLength: 1, maxLength: 4 }).map((values) => ({ enum: values })),
  fc.oneof(fc.string({ maxLength: 6 }), fc.integer(), fc.constant(null)).map((value) => ({ const: value })),
  fc.constant({ type: ["integer", "null"] })
)

const propertyName = fc.stringMatching(/^[a-z][a-z0-9_]{0,7}$/)

const schemaOf: fc.Arbitrary<Schema> = fc.letrec<{ node: Schema }>((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    leaf,
    fc.dictionary(propertyName, tie("node"), { minKeys: 1, maxKeys: 3 }).map((properties) => ({
      type: "object",
      properties,
      required: Object.keys(properties),
      additionalProperties: false
    })),
    fc.record({ items: tie("node"), maxItems: fc.integer({ min: 0, max: 3 }) }).map(({ items, maxItems }) => ({ type: "array", items, maxItems })),
    fc.tuple(tie("node"), tie("node")).map((alternatives) => ({ anyOf: alternatives }))
  )
})).node

describe("structured output holds (property)", () => {
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 4096 }))
    client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
  })
  afterAll(() => server?.close())

  /** One sampled choice under `format`; a seed and temperature 1 so runs differ. */
  const jsonChoice = async (format: NonNullable<OpenAI.ChatCompletionCreateParams["response_format"]>, seed: number, maxTokens: number) =>
    (await client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "user", content: "Answer in JSON." }],
      max_tokens: maxTokens,
      seed,
      temperature: 1,
      response_format: format
    })).choices[0]!

  it("json_schema output that stops normally parses and validates", { timeout: 240_000 }, async () => {
    let checked = 0
    await fc.assert(
      fc.asyncProperty(
        schemaOf.map((schema) => ({ type: "object", properties: { value: schema }, required: ["value"], additionalProperties: false })),
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        async (schema, seed) => {
          const choice = await jsonChoice({ type: "json_schema", json_schema: { name: "s", schema, strict: true } }, seed, 400)
          if (choice.finish_reason !== "stop") return
          checked += 1
          const value: unknown = JSON.parse(choice.message.content!)
          expect(schemaViolation(schema, value), choice.message.content!).toBeUndefined()
        }
      ),
      { numRuns: 25, seed: propertySeed }
    )
    // Most runs end within max_tokens, so the property is not vacuous.
    expect(checked).toBeGreaterThan(12)
  })

  it("json_object output that stops normally is a JSON object with finite numbers", { timeout: 120_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 31 - 1 }), async (seed) => {
        const choice = await jsonChoice({ type: "json_object" }, seed, 300)
        if (choice.finish_reason !== "stop") return
        const text = choice.message.content!
        const value: unknown = JSON.parse(text)
        expect(typeof value === "object" && value !== null && !Array.isArray(value), text).toBe(true)
        expect(allFinite(value), text).toBe(true)
      }),
      { numRuns: 10, seed: propertySeed }
    )
  })
})
