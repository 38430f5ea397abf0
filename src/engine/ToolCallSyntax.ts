/** A function the model may call: its name, what it does, and the JSON schema of its arguments. */
export interface ToolFunction {
  readonly name: string
  readonly description?: string | undefined
  /** JSON schema of the arguments object. */
  readonly parameters: unknown
}

/** One call the assistant made, as the history carries it. */
export interface ToolCallRecord {
  readonly id: string
  readonly name: string
  /** The arguments as JSON text. */
  readonly arguments: string
}

/**
 * How a model writes tool calls, as plain text: `sectionPrefix`, then calls separated by `betweenCalls`, each
 * `callPrefix name paramsPrefix {arguments} callSuffix`.
 */
export interface ToolCallSyntax {
  readonly sectionPrefix: string
  readonly callPrefix: string
  readonly paramsPrefix: string
  readonly callSuffix: string
  readonly betweenCalls: string
}

/** Hermes / Qwen2.5 style: `<tool_call>\n{"name": "f", "arguments": {…}}\n</tool_call>`, one per line. */
export const hermesToolCallSyntax: ToolCallSyntax = {
  sectionPrefix: "",
  callPrefix: "<tool_call>\n{\"name\": \"",
  paramsPrefix: "\", \"arguments\": ",
  callSuffix: "}\n</tool_call>",
  betweenCalls: "\n"
}

/** Where the first call of a tool-call section starts. */
export const callSectionStart = (syntax: ToolCallSyntax): string => syntax.sectionPrefix + syntax.callPrefix
