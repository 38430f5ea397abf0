import type { Usage } from "../scheduler/GenerationRequest.js"

/** Which endpoint a response belongs to. */
export type CompletionKind = "chat" | "text"

/** What every response and chunk of one request repeats. */
export interface ResponseMeta {
  readonly kind: CompletionKind
  readonly id: string
  /** Unix seconds. */
  readonly created: number
  readonly model: string
}

/** OpenAI's finish reasons for a generation that ended normally. */
export type OpenAiFinishReason = "stop" | "length" | "tool_calls"

/** A tool call of a complete response. */
export interface ToolCallOutput {
  readonly id: string
  readonly name: string
  /** JSON text, as OpenAI sends it. */
  readonly arguments: string
}

export interface OpenAiUsage {
  readonly prompt_tokens: number
  readonly completion_tokens: number
  readonly total_tokens: number
  /** Prompt tokens served from the prefix cache, as OpenAI reports cached input. */
  readonly prompt_tokens_details: { readonly cached_tokens: number }
}

export const usageOf = (usage: Usage): OpenAiUsage => ({
  prompt_tokens: usage.promptTokens,
  completion_tokens: usage.completionTokens,
  total_tokens: usage.promptTokens + usage.completionTokens,
  prompt_tokens_details: { cached_tokens: usage.cachedTokens }
})

/** An assistant message; with tool calls, `content` is the text before them, or null when there is none. */
const messageOf = (text: string, toolCalls: ReadonlyArray<ToolCallOutput>) =>
  toolCalls.length === 0
    ? { role: "assistant", content: text, refusal: null }
    : {
      role: "assistant",
      content: text === "" ? null : text,
      refusal: null,
      tool_calls: toolCalls.map((call) => ({ id: call.id, type: "function", function: { name: call.name, arguments: call.arguments } }))
    }

/** The complete (non-streaming) response body. */
export const completionBody = (
  meta: ResponseMeta,
  text: string,
  finishReason: OpenAiFinishReason,
  usage: Usage,
  toolCalls: ReadonlyArray<ToolCallOutput> = []
) =>
  meta.kind === "chat"
    ? {
      id: meta.id,
      object: "chat.completion",
      created: meta.created,
      model: meta.model,
      choices: [{ index: 0, message: messageOf(text, toolCalls), logprobs: null, finish_reason: finishReason }],
      usage: usageOf(usage)
    }
    : {
      id: meta.id,
      object: "text_completion",
      created: meta.created,
      model: meta.model,
      choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason }],
      usage: usageOf(usage)
    }

/** What one streamed chunk carries. */
export type ChunkPart =
  | { readonly _tag: "Role" }
  | { readonly _tag: "Content"; readonly text: string; readonly finishReason: OpenAiFinishReason | null }
  | { readonly _tag: "Usage"; readonly usage: Usage }
  /** A tool call begins: its id and function name, with empty arguments. */
  | { readonly _tag: "ToolCallStart"; readonly index: number; readonly id: string; readonly name: string }
  /** More of a tool call's arguments. */
  | { readonly _tag: "ToolCallArguments"; readonly index: number; readonly text: string }

/** The delta of a tool-call chunk, as OpenAI streams it: id, type and name first, then argument fragments. */
const toolCallDelta = (part: Extract<ChunkPart, { readonly _tag: "ToolCallStart" | "ToolCallArguments" }>) => ({
  tool_calls: [
    part._tag === "ToolCallStart"
      ? { index: part.index, id: part.id, type: "function", function: { name: part.name, arguments: "" } }
      : { index: part.index, function: { arguments: part.text } }
  ]
})

/** One streamed chunk; with `include_usage` every chunk has `usage` (null until the last), as OpenAI sends it. */
export const chunkBody = (meta: ResponseMeta, part: ChunkPart, includeUsage: boolean) => {
  const usage = includeUsage ? { usage: part._tag === "Usage" ? usageOf(part.usage) : null } : {}
  const head = {
    id: meta.id,
    object: meta.kind === "chat" ? "chat.completion.chunk" : "text_completion",
    created: meta.created,
    model: meta.model
  }
  if (part._tag === "Usage") return { ...head, choices: [], ...usage }
  if (part._tag === "ToolCallStart" || part._tag === "ToolCallArguments") {
    return { ...head, choices: [{ index: 0, delta: toolCallDelta(part), logprobs: null, finish_reason: null }], ...usage }
  }
  if (meta.kind === "text") {
    const text = part._tag === "Content" ? part.text : ""
    const finishReason = part._tag === "Content" ? part.finishReason : null
    return { ...head, choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason }], ...usage }
  }
  const delta = part._tag === "Role"
    ? { role: "assistant", content: "" }
    : part.text === "" && part.finishReason !== null
    ? {}
    : { content: part.text }
  const finishReason = part._tag === "Content" ? part.finishReason : null
  return { ...head, choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }], ...usage }
}
