import type { GeneratedLogprob, Usage } from "../scheduler/GenerationRequest.js"

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

const utf8 = new TextEncoder()
const bytesOf = (text: string) => Array.from(utf8.encode(text))

/** Chat's `choices[i].logprobs`: each token with its log probability, UTF-8 bytes and most likely alternatives. */
export const chatLogprobs = (entries: ReadonlyArray<GeneratedLogprob>) => ({
  content: entries.map((entry) => ({
    token: entry.text,
    logprob: entry.logprob,
    bytes: bytesOf(entry.text),
    top_logprobs: entry.top.map((top) => ({ token: top.text, logprob: top.logprob, bytes: bytesOf(top.text) }))
  })),
  refusal: null
})

/** Length in characters (code points), as OpenAI's legacy `text_offset` counts. */
export const characterCount = (text: string) => {
  let count = 0
  for (const _ of text) count++
  return count
}

/** Legacy completions' `choices[i].logprobs`; `offset` is where the first token starts in the choice's text. */
export const legacyLogprobs = (entries: ReadonlyArray<GeneratedLogprob>, offset: number) => {
  const text_offset: Array<number> = []
  let at = offset
  for (const entry of entries) {
    text_offset.push(at)
    at += characterCount(entry.text)
  }
  return {
    tokens: entries.map((entry) => entry.text),
    token_logprobs: entries.map((entry) => entry.logprob),
    // Two alternatives may render to the same text: the more likely one (listed first) keeps the key.
    top_logprobs: entries.map((entry) => Object.fromEntries([...entry.top].reverse().map((top) => [top.text, top.logprob]))),
    text_offset
  }
}

/** One finished choice of a complete response; `logprobs` only when they were asked for. */
export interface ChoiceResult {
  readonly text: string
  readonly finishReason: OpenAiFinishReason
  readonly logprobs?: ReadonlyArray<GeneratedLogprob> | undefined
  /** The tool calls a chat choice made (its `text` is then what came before them). */
  readonly toolCalls?: ReadonlyArray<ToolCallOutput> | undefined
}

/** The complete (non-streaming) response body, choices in `index` order. */
export const completionBody = (meta: ResponseMeta, choices: ReadonlyArray<ChoiceResult>, usage: Usage) =>
  meta.kind === "chat"
    ? {
      id: meta.id,
      object: "chat.completion",
      created: meta.created,
      model: meta.model,
      choices: choices.map((choice, index) => ({
        index,
        message: messageOf(choice.text, choice.toolCalls ?? []),
        logprobs: choice.logprobs === undefined ? null : chatLogprobs(choice.logprobs),
        finish_reason: choice.finishReason
      })),
      usage: usageOf(usage)
    }
    : {
      id: meta.id,
      object: "text_completion",
      created: meta.created,
      model: meta.model,
      choices: choices.map((choice, index) => ({
        index,
        text: choice.text,
        logprobs: choice.logprobs === undefined ? null : legacyLogprobs(choice.logprobs, 0),
        finish_reason: choice.finishReason
      })),
      usage: usageOf(usage)
    }

/** What one streamed chunk carries; content parts name their choice and carry their tokens' logprobs, if asked for. */
export type ChunkPart =
  | { readonly _tag: "Role"; readonly index: number }
  | {
    readonly _tag: "Content"
    readonly index: number
    readonly text: string
    readonly finishReason: OpenAiFinishReason | null
    readonly logprobs?: ReadonlyArray<GeneratedLogprob> | undefined
    /** Characters of this choice's text sent before this chunk (legacy `text_offset`). */
    readonly offset?: number | undefined
  }
  | { readonly _tag: "Usage"; readonly usage: Usage }
  /** A tool call of choice `index` begins (the choice's `call`-th): its id and function name, with empty arguments. */
  | { readonly _tag: "ToolCallStart"; readonly index: number; readonly call: number; readonly id: string; readonly name: string }
  /** More of the arguments of choice `index`'s `call`-th tool call. */
  | { readonly _tag: "ToolCallArguments"; readonly index: number; readonly call: number; readonly text: string }

/** The delta of a tool-call chunk, as OpenAI streams it: id, type and name first, then argument fragments. */
const toolCallDelta = (part: Extract<ChunkPart, { readonly _tag: "ToolCallStart" | "ToolCallArguments" }>) => ({
  tool_calls: [
    part._tag === "ToolCallStart"
      ? { index: part.call, id: part.id, type: "function", function: { name: part.name, arguments: "" } }
      : { index: part.call, function: { arguments: part.text } }
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
    return { ...head, choices: [{ index: part.index, delta: toolCallDelta(part), logprobs: null, finish_reason: null }], ...usage }
  }
  const content = part._tag === "Content" ? part : undefined
  const finishReason = content?.finishReason ?? null
  if (meta.kind === "text") {
    const logprobs = content?.logprobs === undefined ? null : legacyLogprobs(content.logprobs, content.offset ?? 0)
    return { ...head, choices: [{ index: part.index, text: content?.text ?? "", logprobs, finish_reason: finishReason }], ...usage }
  }
  const delta = content === undefined
    ? { role: "assistant", content: "" }
    : content.text === "" && content.finishReason !== null
    ? {}
    : { content: content.text }
  const logprobs = content?.logprobs === undefined ? null : chatLogprobs(content.logprobs)
  return { ...head, choices: [{ index: part.index, delta, logprobs, finish_reason: finishReason }], ...usage }
}
