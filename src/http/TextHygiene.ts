/** What is wrong with a string: a NUL character, or a UTF-16 surrogate without its pair (not text at all). */
export type TextProblem = "nul" | "lone_surrogate"

const anySurrogate = /[\ud800-\udfff]/

/** Whether `text` holds a surrogate without its pair; a plain loop, as a regex with lookbehind is slow on long text. */
const hasLoneSurrogate = (text: string): boolean => {
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index)
    if (code < 0xd800 || code > 0xdfff) continue
    if (code > 0xdbff) return true
    const next = text.charCodeAt(index + 1)
    if (!(next >= 0xdc00 && next <= 0xdfff)) return true
    index++
  }
  return false
}

const problemOf = (text: string): TextProblem | undefined => {
  if (text.includes("\u0000")) return "nul"
  // Most text has no surrogates at all: the native scan answers for it without the loop.
  return anySurrogate.test(text) && hasLoneSurrogate(text) ? "lone_surrogate" : undefined
}

const pathText = (path: ReadonlyArray<string | number>): string =>
  path.reduce<string>((text, segment) => (typeof segment === "number" ? `${text}[${segment}]` : text === "" ? segment : `${text}.${segment}`), "")

/**
 * The first string (value or object key) in a decoded JSON body holding a NUL or a lone surrogate, with its parameter
 * path (`messages[0].content`). Such text would be cut short by C code (NUL) or cannot be encoded as UTF-8 for the
 * tokenizer, a log line or a database (lone surrogates), so it is refused before anything sees it.
 */
export const findBadText = (value: unknown): { readonly param: string; readonly problem: TextProblem } | undefined => {
  // Iterative, so a deep body cannot overflow the stack (bodies are depth-limited before this too).
  const stack: Array<{ readonly value: unknown; readonly path: ReadonlyArray<string | number> }> = [{ value, path: [] }]
  while (stack.length > 0) {
    const { value: current, path } = stack.pop()!
    if (typeof current === "string") {
      const problem = problemOf(current)
      if (problem !== undefined) return { param: pathText(path), problem }
    } else if (Array.isArray(current)) {
      for (let index = current.length - 1; index >= 0; index--) stack.push({ value: current[index], path: [...path, index] })
    } else if (typeof current === "object" && current !== null) {
      const entries = Object.entries(current)
      for (let index = entries.length - 1; index >= 0; index--) {
        const [key, child] = entries[index]!
        const problem = problemOf(key)
        if (problem !== undefined) return { param: pathText(path), problem }
        stack.push({ value: child, path: [...path, key] })
      }
    }
  }
  return undefined
}

/** How a problem reads in an error message. */
export const textProblemDescription = (problem: TextProblem): string =>
  problem === "nul" ? "a NUL character (\\u0000)" : "a lone UTF-16 surrogate (not valid Unicode text)"
