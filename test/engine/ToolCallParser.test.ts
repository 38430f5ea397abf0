import { describe, expect, it } from "@effect/vitest"
import { FastCheck } from "effect"
import { ToolCallParser } from "../../src/engine/ToolCallParser.js"
import type { ToolCallEvent } from "../../src/engine/ToolCallParser.js"
import { hermesToolCallSyntax } from "../../src/engine/ToolCallSyntax.js"
import type { ToolCallSyntax } from "../../src/engine/ToolCallSyntax.js"
import { finiteNumbers, prefixRules, toolCallGrammar, withoutTrailingNewlines } from "../../src/engine/llama/ToolGrammar.js"

/** node-llama-cpp's default syntax, which its ChatML and general wrappers teach a model. */
const nodeLlamaCppDefault: ToolCallSyntax = { sectionPrefix: "", callPrefix: "||call: ", paramsPrefix: "(", callSuffix: ")", betweenCalls: "\n" }

/** Runs the parser over `chunks` and folds its events into text and calls. */
const parse = (syntax: ToolCallSyntax, chunks: ReadonlyArray<string>) => {
  const parser = new ToolCallParser(syntax)
  const events: Array<ToolCallEvent> = []
  for (const chunk of chunks) events.push(...parser.push(chunk))
  events.push(...parser.finish())
  let text = ""
  const calls: Array<{ name: string; arguments: string }> = []
  for (const event of events) {
    if (event._tag === "Text") text += event.text
    else if (event._tag === "CallStarted") {
      expect(event.index).toBe(calls.length)
      calls.push({ name: event.name, arguments: "" })
    } else {
      expect(event.index).toBe(calls.length - 1)
      calls[event.index]!.arguments += event.text
    }
  }
  return { text, calls, events }
}

/** Cuts `text` at the given positions (sorted, deduplicated). */
const cut = (text: string, positions: ReadonlyArray<number>) => {
  const points = [...new Set(positions.map((position) => position % (text.length + 1)))].sort((a, b) => a - b)
  const pieces: Array<string> = []
  let from = 0
  for (const point of points) {
    pieces.push(text.slice(from, point))
    from = point
  }
  pieces.push(text.slice(from))
  return pieces
}

const hermesCall = (name: string, args: unknown) =>
  `${hermesToolCallSyntax.callPrefix}${name}${hermesToolCallSyntax.paramsPrefix}${JSON.stringify(args)}${hermesToolCallSyntax.callSuffix}`

const tricky = { text: "a } and a \" quote and \\\\ and {[", nested: { list: [1, { deep: "}" }], empty: {} } }

describe("ToolCallParser", () => {
  it("splits Hermes tool calls into names and arguments, however the text arrives", () => {
    const output = [hermesCall("get_weather", tricky), hermesCall("get_time", {})].join("\n")
    const { calls, text } = parse(hermesToolCallSyntax, [output])
    expect(text).toBe("")
    expect(calls).toEqual([{ name: "get_weather", arguments: JSON.stringify(tricky) }, { name: "get_time", arguments: "{}" }])
  })

  it.prop(
    "streamed in any pieces, gives the same calls and never leaks markup as text",
    [FastCheck.array(FastCheck.nat({ max: 400 }), { maxLength: 40 }), FastCheck.jsonValue(), FastCheck.boolean()],
    ([positions, value, two]) => {
      const args = { value }
      const output = two ? `${hermesCall("f", args)}\n${hermesCall("g", args)}` : hermesCall("f", args)
      const { calls, text } = parse(hermesToolCallSyntax, cut(output, positions))
      expect(text).toBe("")
      expect(calls.map((call) => call.name)).toEqual(two ? ["f", "g"] : ["f"])
      for (const call of calls) expect(JSON.parse(call.arguments)).toEqual(JSON.parse(JSON.stringify(args)))
    }
  )

  it.prop(
    "passes text through unchanged when the output does not start with a call, in any pieces",
    [FastCheck.string(), FastCheck.array(FastCheck.nat({ max: 100 }), { maxLength: 10 })],
    ([text, positions]) => {
      FastCheck.pre(!text.startsWith("<tool_call>"))
      const parsed = parse(hermesToolCallSyntax, cut(text, positions))
      expect(parsed.text).toBe(text)
      expect(parsed.calls).toEqual([])
    }
  )

  it("holds back a possible start and releases it as text once it diverges or the output ends", () => {
    const parser = new ToolCallParser(hermesToolCallSyntax)
    expect(parser.push("<tool")).toEqual([])
    expect(parser.push("s are")).toEqual([{ _tag: "Text", text: "<tools are" }])
    const ended = new ToolCallParser(hermesToolCallSyntax)
    expect(ended.push("<tool_c")).toEqual([])
    expect(ended.finish()).toEqual([{ _tag: "Text", text: "<tool_c" }])
  })

  it("streams a call's name first, then its arguments as they come", () => {
    const parser = new ToolCallParser(hermesToolCallSyntax)
    expect(parser.push("<tool_call>\n{\"name\": \"get_")).toEqual([])
    expect(parser.push("time\", \"arguments\": {\"zo")).toEqual([
      { _tag: "CallStarted", index: 0, name: "get_time" },
      { _tag: "Arguments", index: 0, text: "{\"zo" }
    ])
    expect(parser.push("ne\": \"UTC\"}}\n</tool_call>")).toEqual([{ _tag: "Arguments", index: 0, text: "ne\": \"UTC\"}" }])
    expect(parser.finish()).toEqual([])
    expect(parser.calls).toBe(1)
  })

  it("parses node-llama-cpp's default syntax (`||call: name({...})`) as well", () => {
    const output = `||call: get_time({"zone": "UTC"})\n||call: get_weather({"city": ")"})`
    const { calls, text } = parse(nodeLlamaCppDefault, cut(output, [3, 9, 17, 30, 41]))
    expect(text).toBe("")
    expect(calls).toEqual([{ name: "get_time", arguments: "{\"zone\": \"UTC\"}" }, { name: "get_weather", arguments: "{\"city\": \")\"}" }])
  })
})

describe("ToolGrammar", () => {
  const schemaGrammar = [
    "root ::= \"{\" ws \"\\\"n\\\"\" \":\" [ ]? integer-number-rule ws \"}\" \"\\n\\n\\n\\n\" [\\n]*",
    "integer-number-rule ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15}) ([eE] [-+]? (\"0\" | [1-9] [0-9]{0,15}))?",
    "ws ::= [ \\t\\n]? # comment-word"
  ].join("\n")

  it("prefixes rule names, and only rule names", () => {
    expect(prefixRules(schemaGrammar, "fn0-").split("\n")).toEqual([
      "fn0-root ::= \"{\" fn0-ws \"\\\"n\\\"\" \":\" [ ]? fn0-integer-number-rule fn0-ws \"}\" \"\\n\\n\\n\\n\" [\\n]*",
      "fn0-integer-number-rule ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15}) ([eE] [-+]? (\"0\" | [1-9] [0-9]{0,15}))?",
      "fn0-ws ::= [ \\t\\n]? "
    ])
  })

  it("drops the forced trailing newlines and exponents from node-llama-cpp's schema grammars", () => {
    const cleaned = finiteNumbers(withoutTrailingNewlines(schemaGrammar))
    expect(cleaned.split("\n")[0]).toBe("root ::= \"{\" ws \"\\\"n\\\"\" \":\" [ ]? integer-number-rule ws \"}\"")
    expect(cleaned).toContain("integer-number-rule ::= \"-\"? (\"0\" | [1-9] [0-9]{0,14})\n")
  })

  it("composes calls of the functions, optionally in parallel or as an alternative to text", () => {
    const grammar = toolCallGrammar({
      syntax: hermesToolCallSyntax,
      functions: [{ name: "f", gbnf: schemaGrammar }, { name: "g", gbnf: schemaGrammar }],
      allowText: true,
      parallel: true
    })
    const lines = grammar.split("\n")
    expect(lines[0]).toBe("root ::= tool-calls | free-text")
    expect(lines[1]).toBe("tool-calls ::= tool-call (\"\\n\" tool-call)*")
    expect(lines[2]).toBe(
      "tool-call ::= \"<tool_call>\\n{\\\"name\\\": \\\"\" (\"f\" \"\\\", \\\"arguments\\\": \" fn0-root | \"g\" \"\\\", \\\"arguments\\\": \" fn1-root) \"}\\n</tool_call>\""
    )
    expect(lines[3]).toBe("free-text ::= ([^\\U0000003c] .*)?")
    expect(grammar).toContain("fn1-root ::=")
  })
})
