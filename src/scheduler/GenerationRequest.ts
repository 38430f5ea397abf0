import { Data } from "effect"
import type { SamplingOptions } from "../engine/SamplingOptions.js"
import type { DecodeFailed, StructuredOutputInvalid } from "../engine/Backend.js"
import type { StageTimedOut } from "./SchedulerErrors.js"
import type { CancelReason } from "./RequestLifecycle.js"
import type { PromptShare } from "./PromptShare.js"

export type Priority = "high" | "normal" | "low"

/** Limits per stage, in milliseconds; `undefined` means unlimited. */
export interface StageTimeouts {
  /** From admission until a slot is held. */
  readonly queueMs?: number | undefined
  /** From holding a slot until the first token is sampled. */
  readonly firstTokenMs?: number | undefined
  /** From admission until the generation ends. */
  readonly totalMs?: number | undefined
}

/** One generation to run: already tokenized and validated. */
export interface GenerationRequest {
  readonly id: string
  readonly prompt: ReadonlyArray<number>
  /** `seed` may be left out: the scheduler then draws a fresh random one for this request. */
  readonly sampling: Omit<SamplingOptions, "seed"> & { readonly seed?: number | undefined }
  /** Generated-token limit; `undefined` generates until end-of-generation or a full context. */
  readonly maxTokens?: number | undefined
  readonly stop?: ReadonlyArray<string> | undefined
  readonly priority?: Priority | undefined
  /** Per-request limits; each is capped by the server's own. */
  readonly timeouts?: StageTimeouts | undefined
  /** Isolates prefix-cache reuse: only requests with the same key (tenant, API key, cache salt) share cached KV. */
  readonly cacheKey?: string | undefined
  /** Set on the choices of one prompt (`n` > 1): the prompt is evaluated once, and its KV copied to the others' slots. */
  readonly promptShare?: PromptShare | undefined
  /** The chat session this is a turn of: its KV is restored from and saved to disk (see `SessionKvConfig`). */
  readonly sessionId?: string | undefined
}

/** A token as text with its log probability. */
export interface TextLogprob {
  readonly text: string
  readonly logprob: number
}

/** One generated token's log probability and its step's most likely tokens, rendered as text. */
export interface GeneratedLogprob extends TextLogprob {
  readonly top: ReadonlyArray<TextLogprob>
}

export type FinishReason = "stop" | "length" | "cancelled" | "timeout" | "error"

export interface Usage {
  readonly promptTokens: number
  readonly completionTokens: number
  /** Prompt tokens served from the prefix cache instead of being evaluated. */
  readonly cachedTokens: number
}

/** What a running request reports to its caller, in order: `Started`, `Delta`s, then exactly one `Finished`. */
export type GenerationEvent = Data.TaggedEnum<{
  Started: {
    readonly requestId: string
    readonly slot: number
    readonly seed: number
    readonly promptTokens: number
    readonly cachedTokens: number
  }
  /** `logprobs`, when the sampling options asked for them: one per token this delta accounts for, in order. */
  Delta: { readonly text: string; readonly tokens: number; readonly logprobs?: ReadonlyArray<GeneratedLogprob> | undefined }
  Finished: {
    readonly finishReason: FinishReason
    readonly usage: Usage
    /** `StructuredOutputInvalid` is set by the HTTP layer, which validates grammar-constrained output once it ends. */
    readonly error?: StageTimedOut | DecodeFailed | StructuredOutputInvalid | undefined
    /** Who cancelled it, when `finishReason` is `cancelled`. */
    readonly cancelReason?: CancelReason | undefined
  }
}>

export const GenerationEvent = Data.taggedEnum<GenerationEvent>()
