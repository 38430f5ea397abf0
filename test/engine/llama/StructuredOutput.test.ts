import { Chunk, Effect, Stream } from "effect"
import * as fs from "node:fs"
import { describe, expect, it } from "vitest"
import { hardenGbnf } from "../../../src/engine/llama/GbnfHardening.js"
import { schemaViolation } from "../../../src/engine/llama/JsonSchemaValidator.js"
import { outputViolation, validatedOutput } from "../../../src/http/StructuredOutput.js"
import { GenerationEvent } from "../../../src/scheduler/GenerationRequest.js"

// Finding 7: structured output that holds. The grammar rules that let `{"a":5822024E2025000202422024}` through for
// an integer are replaced, and output is validated against its schema once it ends.

const usage = { promptTokens: 3, completionTokens: 4, cachedTokens: 0 }

const run = (schema: unknown, text: string, finishReason: "stop" | "length" = "stop") =>
  Effect.runPromise(
    Stream.runCollect(
      validatedOutput(
        { _tag: "JsonSchema", schema },
        Stream.make(
          GenerationEvent.Started({ requestId: "r", slot: 0, seed: 1, promptTokens: 3, cachedTokens: 0 }),
          GenerationEvent.Delta({ text, tokens: 4 }),
          GenerationEvent.Finished({ finishReason, usage })
        )
      )
    )
  ).then((events) => Chunk.toReadonlyArray(events).at(-1)!)

describe("structured output", () => {
  const integer = { type: "object", properties: { a: { type: "integer" } }, required: ["a"] }

  it("the validator refuses the integer that once came out, and non-integers, and accepts integers", () => {
    expect(schemaViolation(integer, JSON.parse("{ \"a\":5822024E2025000202422024 }"))).toMatch(/^a: expected integer/)
    expect(schemaViolation(integer, { a: 1.5 })).toMatch(/^a: expected integer/)
    expect(schemaViolation(integer, { a: -12 })).toBeUndefined()
    expect(schemaViolation({ type: "number" }, Infinity)).toMatch(/expected number/)
  })

  it("the validator checks formats, lengths, items, required and additional properties, enums and alternatives", () => {
    expect(schemaViolation({ type: "string", format: "date" }, "2024-02-31")).toMatch(/not a valid date/)
    expect(schemaViolation({ type: "string", format: "date" }, "2024-02-29")).toBeUndefined()
    expect(schemaViolation({ type: "string", format: "date-time" }, "2024-04-30T23:59:59.123+05:30")).toBeUndefined()
    expect(schemaViolation({ type: "string", format: "time" }, "24:00:00Z")).toMatch(/not a valid time/)
    expect(schemaViolation({ type: "string", maxLength: 2 }, "abc")).toMatch(/longer than 2/)
    expect(schemaViolation({ type: "array", items: { type: "boolean" }, maxItems: 2 }, [true, 1])).toMatch(/^\[1\]: expected boolean/)
    expect(schemaViolation({ type: "object", properties: { a: { type: "null" } }, additionalProperties: false }, { a: null, b: 1 })).toMatch(/unexpected property "b"/)
    expect(schemaViolation(integer, {})).toMatch(/missing required property "a"/)
    expect(schemaViolation({ enum: ["x", 2] }, 3)).toMatch(/enum/)
    expect(schemaViolation({ anyOf: [{ type: "string" }, { type: "integer" }] }, 2)).toBeUndefined()
    expect(schemaViolation({ $defs: { n: { type: "integer" } }, type: "array", items: { $ref: "#/$defs/n" } }, [1, 0.5])).toMatch(/^\[1\]/)
  })

  it("a generation whose output does not validate ends as StructuredOutputInvalid, not as a reply", async () => {
    const last = await run(integer, "{\"a\": 1e400}")
    expect(last).toMatchObject({ _tag: "Finished", finishReason: "error", error: { _tag: "StructuredOutputInvalid" } })
    expect(await run(integer, "{\"a\": 12}")).toMatchObject({ _tag: "Finished", finishReason: "stop" })
    // Output cut by max_tokens is incomplete by definition and passed on as it is.
    expect(await run(integer, "{\"a\": ", "length")).toMatchObject({ _tag: "Finished", finishReason: "length" })
    expect(outputViolation({ _tag: "Json" }, "[1]")).toBe("not a JSON object")
  })

  it("hardened grammars have no exponent on integers, bounded exponents on numbers, and month-length dates", () => {
    const gbnf = [
      "root ::= integer-number-rule",
      "integer-number-rule ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15}) ([eE] [-+]? (\"0\" | [1-9] [0-9]{0,15}))?",
      "fractional-number-rule ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15}) (\".\" [0-9]{1,16})? ([eE] [-+]? (\"0\" | [1-9] [0-9]{0,15}))?",
      "string-format-date-rule ::= \"\\\"\" [0-9]{4} \"-\" (\"0\" [1-9] | \"1\" [012]) \"-\" (\"0\" [1-9] | [12] [0-9] | \"3\" [01]) \"\\\"\""
    ].join("\n")
    const hardened = hardenGbnf(gbnf).split("\n")
    expect(hardened[0]).toBe("root ::= integer-number-rule")
    expect(hardened[1]).toBe("integer-number-rule ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15})")
    expect(hardened[2]).toContain("([eE] [-+]? [0-9]{1,2})?")
    expect(hardened[3]).toContain("\"02\" \"-\" (\"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8])")
    const json = hardenGbnf(fs.readFileSync(new URL("../../../node_modules/node-llama-cpp/llama/grammars/json.gbnf", import.meta.url), "utf8"))
    expect(json).toContain("number ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15}) (\".\" [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})? ws")
  })
})
