import { callSectionStart } from "./ToolCallSyntax.js"
import type { ToolCallSyntax } from "./ToolCallSyntax.js"

/** What a piece of generated text turned out to be. */
export type ToolCallEvent =
  | { readonly _tag: "Text"; readonly text: string }
  | { readonly _tag: "CallStarted"; readonly index: number; readonly name: string }
  | { readonly _tag: "Arguments"; readonly index: number; readonly text: string }

type State = "lead" | "text" | "name" | "arguments" | "after"

/**
 * Splits streamed output into text and tool calls written in `syntax`. Output is a tool-call section only if it starts
 * with one (as the tool grammar allows); otherwise all of it is text. Text that could still become the section's
 * start is held back, so call markup never leaks as text; a call's arguments stream as they come, up to the end of
 * their JSON object (found by tracking nesting outside strings). Whatever follows the last call (its suffix) is dropped.
 *
 * Invariant: `buffer` holds only text not yet classified; each `push` returns every event its text completed.
 */
export class ToolCallParser {
  private state: State = "lead"
  private buffer = ""
  private index = -1
  private depth = 0
  private started = false
  private inString = false
  private escaped = false
  private readonly start: string
  private readonly nextCall: string

  constructor(private readonly syntax: ToolCallSyntax) {
    this.start = callSectionStart(syntax)
    this.nextCall = syntax.callSuffix + syntax.betweenCalls + syntax.callPrefix
  }

  /** How many calls have started so far. */
  get calls(): number {
    return this.index + 1
  }

  push(text: string): ReadonlyArray<ToolCallEvent> {
    const events: Array<ToolCallEvent> = []
    this.buffer += text
    while (this.step(events)) {
      // each step consumes from the buffer or changes state
    }
    return events
  }

  /** The generation ended: text held back as a possible section start is text after all. */
  finish(): ReadonlyArray<ToolCallEvent> {
    if (this.state !== "lead" || this.buffer === "") return []
    const text = this.buffer
    this.buffer = ""
    this.state = "text"
    return [{ _tag: "Text", text }]
  }

  /** Runs one transition; false once it needs more text. */
  private step(events: Array<ToolCallEvent>): boolean {
    switch (this.state) {
      case "lead":
        if (this.buffer.startsWith(this.start)) {
          this.buffer = this.buffer.slice(this.start.length)
          this.state = "name"
          return true
        }
        if (this.start.startsWith(this.buffer)) return false
        this.state = "text"
        return true
      case "text":
        if (this.buffer !== "") events.push({ _tag: "Text", text: this.buffer })
        this.buffer = ""
        return false
      case "name": {
        const at = this.buffer.indexOf(this.syntax.paramsPrefix)
        if (at === -1) return false
        this.index += 1
        events.push({ _tag: "CallStarted", index: this.index, name: this.buffer.slice(0, at).trim() })
        this.buffer = this.buffer.slice(at + this.syntax.paramsPrefix.length)
        this.state = "arguments"
        this.depth = 0
        this.started = this.inString = this.escaped = false
        return true
      }
      case "arguments": {
        const end = this.argumentsEnd()
        const piece = end === -1 ? this.buffer : this.buffer.slice(0, end)
        if (piece !== "") events.push({ _tag: "Arguments", index: this.index, text: piece })
        this.buffer = end === -1 ? "" : this.buffer.slice(end)
        if (end === -1) return false
        this.state = "after"
        return true
      }
      case "after":
        if (!this.buffer.startsWith(this.nextCall)) return false
        this.buffer = this.buffer.slice(this.nextCall.length)
        this.state = "name"
        return true
    }
  }

  /** Where in the buffer the arguments' JSON value ends (just past it), or -1 if it does not end there yet. */
  private argumentsEnd(): number {
    for (let at = 0; at < this.buffer.length; at++) {
      const char = this.buffer[at]!
      if (this.inString) {
        if (this.escaped) this.escaped = false
        else if (char === "\\") this.escaped = true
        else if (char === "\"") this.inString = false
        continue
      }
      if (char === "\"") this.inString = true
      else if (char === "{" || char === "[") {
        this.depth += 1
        this.started = true
      } else if (char === "}" || char === "]") this.depth -= 1
      if (this.started && this.depth === 0) return at + 1
    }
    return -1
  }
}
