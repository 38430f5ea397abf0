import { Context } from "effect"
import type { Ref } from "effect"

/** Tokens a request's generation used, as far as it ran. */
export interface TokenUsage {
  readonly promptTokens: number
  readonly completionTokens: number
}

/** Where a generation route leaves its token usage for the request's audit record; `undefined` when none ran. */
export class RequestUsage extends Context.Tag("weft/RequestUsage")<RequestUsage, Ref.Ref<TokenUsage | undefined>>() {}
