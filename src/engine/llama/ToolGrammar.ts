import { callSectionStart } from "../ToolCallSyntax.js"
import type { ToolCallSyntax } from "../ToolCallSyntax.js"
import { hardenGbnf } from "./GbnfHardening.js"

/** One callable function and the GBNF grammar (with a `root` rule) of its arguments. */
export interface FunctionGrammar {
  readonly name: string
  readonly gbnf: string
}

/** What the tool grammar allows. */
export interface ToolGrammarOptions {
  readonly syntax: ToolCallSyntax
  readonly functions: ReadonlyArray<FunctionGrammar>
  /** Also allow a plain text answer (`tool_choice: auto`): any text that does not start like a tool call. */
  readonly allowText: boolean
  /** Allow several calls in a row, not only one. */
  readonly parallel: boolean
}

/** A GBNF string literal; empty text gives none. */
const literal = (text: string): string => (text === "" ? "" : JSON.stringify(text))

const wordChar = /[A-Za-z0-9_-]/

/** Copies `gbnf` from `at` up to and including the first unescaped `close`. */
const skipDelimited = (gbnf: string, at: number, close: string): number => {
  let end = at + 1
  while (end < gbnf.length && gbnf[end] !== close) end += gbnf[end] === "\\" ? 2 : 1
  return Math.min(end + 1, gbnf.length)
}

/**
 * `gbnf` with every rule name prefixed by `prefix`, so several grammars can live in one. Rule names are the bare
 * words outside string literals, character classes, repetition counts and comments.
 */
export const prefixRules = (gbnf: string, prefix: string): string => {
  let out = ""
  let at = 0
  while (at < gbnf.length) {
    const char = gbnf[at]!
    if (char === "\"" || char === "[" || char === "{") {
      const end = skipDelimited(gbnf, at, char === "\"" ? "\"" : char === "[" ? "]" : "}")
      out += gbnf.slice(at, end)
      at = end
    } else if (char === "#") {
      const end = gbnf.indexOf("\n", at)
      at = end === -1 ? gbnf.length : end
    } else if (wordChar.test(char)) {
      let end = at
      while (end < gbnf.length && wordChar.test(gbnf[end]!)) end += 1
      out += prefix + gbnf.slice(at, end)
      at = end
    } else {
      out += char
      at += 1
    }
  }
  return out
}

/**
 * node-llama-cpp's JSON-schema grammars end their root with forced newlines (`"\n\n\n\n" [\n]*`), which it uses to
 * stop its own generation; inside a tool call the arguments end at their closing brace.
 */
export const withoutTrailingNewlines = (gbnf: string): string =>
  gbnf.replace(/^(root ::= .*?)\s*"(?:\\n)+"\s*\[\\n\]\*\s*$/m, "$1")

/**
 * The schema grammar hardened as for `response_format` (`hardenGbnf`: finite numbers with at most two-digit exponents,
 * valid dates and times), with integers one digit shorter still: at most 15 digits, so they stay exact (below 2^53)
 * once a client parses the arguments.
 */
export const finiteNumbers = (gbnf: string): string =>
  hardenGbnf(gbnf).replace(/^integer-number-rule ::= .*$/m, "integer-number-rule ::= \"-\"? (\"0\" | [1-9] [0-9]{0,14})")

/**
 * The GBNF grammar of a tool-call answer: one call (or several, separated as the syntax separates them) of one of the
 * functions, each with arguments matching that function's schema; with `allowText`, alternatively any text that does
 * not begin with the first character of a tool-call section.
 */
export const toolCallGrammar = (options: ToolGrammarOptions): string => {
  const { syntax } = options
  const sequence = (...parts: ReadonlyArray<string>) => parts.filter((part) => part !== "").join(" ")
  const alternatives = options.functions.map((fn, index) =>
    sequence(literal(fn.name), literal(syntax.paramsPrefix), `fn${index}-root`)
  )
  const lines = [
    `root ::= ${options.allowText ? "tool-calls | free-text" : "tool-calls"}`,
    `tool-calls ::= ${sequence(literal(syntax.sectionPrefix), "tool-call", options.parallel ? `(${sequence(literal(syntax.betweenCalls), "tool-call")})*` : "")}`,
    `tool-call ::= ${sequence(literal(syntax.callPrefix), `(${alternatives.join(" | ")})`, literal(syntax.callSuffix))}`
  ]
  if (options.allowText) {
    const first = callSectionStart(syntax).codePointAt(0)!
    lines.push(`free-text ::= ([^\\U${first.toString(16).padStart(8, "0")}] .*)?`)
  }
  options.functions.forEach((fn, index) => lines.push(prefixRules(finiteNumbers(withoutTrailingNewlines(fn.gbnf)), `fn${index}-`)))
  return lines.join("\n")
}
