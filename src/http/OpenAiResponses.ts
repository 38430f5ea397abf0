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
export type OpenAiFinishReason = "stop" | "length"

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

/** The complete (non-streaming) response body. */
export const completionBody = (meta: ResponseMeta, text: string, finishReason: OpenAiFinishReason, usage: Usage) =>
  meta.kind === "chat"
    ? {
      id: meta.id,
      object: "chat.completion",
      created: meta.created,
      model: meta.model,
      choices: [{ index: 0, message: { role: "assistant", content: text, refusal: null }, logprobs: null, finish_reason: finishReason }],
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
