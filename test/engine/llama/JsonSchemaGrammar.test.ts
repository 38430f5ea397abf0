import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { toGrammarSchema } from "../../../src/engine/llama/JsonSchemaGrammar.js"

const problemAt = (schema: unknown) => Either.match(toGrammarSchema(schema), { onLeft: (problem) => problem.at, onRight: () => undefined })

describe("toGrammarSchema's $ref cycle check", () => {
  it("finds cycles that write nothing first, wherever their $defs are declared", () => {
    expect(problemAt({ $defs: { a: { oneOf: [{ type: "null" }, { $ref: "#/$defs/a" }] } }, $ref: "#/$defs/a" })).toBe("$defs.a.oneOf[1].$ref")
    expect(problemAt({
      type: "object",
      properties: { x: { $defs: { inner: { anyOf: [{ $ref: "#/$defs/outer" }] } }, $ref: "#/$defs/inner" } },
      $defs: { outer: { $ref: "#/$defs/outer2" }, outer2: { $ref: "#/$defs/outer" } }
    })).toBe("$defs.outer2.$ref")
    // An unused definition that refers to itself is refused too: llama.cpp would never get to see it, but it is broken.
    expect(problemAt({ type: "string", $defs: { unused: { $ref: "#/$defs/unused" } } })).toBe("$defs.unused.$ref")
  })

  it("accepts recursion behind an object or array, and shared definitions", () => {
    const tree = { type: "object", properties: { children: { type: "array", items: { $ref: "#/$defs/node" } } } }
    expect(problemAt({ $defs: { node: tree }, $ref: "#/$defs/node" })).toBeUndefined()
    expect(problemAt({
      $defs: { leaf: { type: "string" }, either: { anyOf: [{ $ref: "#/$defs/leaf" }, { $ref: "#/$defs/leaf" }] } },
      type: "array",
      items: { anyOf: [{ $ref: "#/$defs/either" }, { $ref: "#/$defs/leaf" }] }
    })).toBeUndefined()
  })

  it("answers a chain of references too long to follow with a problem, not a crash", () => {
    const length = 200_000
    const defs = Object.fromEntries(Array.from({ length }, (_, index) => [`d${index}`, index === length - 1 ? { type: "string" } : { $ref: `#/$defs/d${index + 1}` }]))
    expect(Either.isEither(toGrammarSchema({ $defs: defs, $ref: "#/$defs/d0" }))).toBe(true)
  })
})
