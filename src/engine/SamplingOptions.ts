import type { ToolCallSyntax } from "./ToolCallSyntax.js"

/** Per-request sampling parameters, already validated and defaulted by the caller. */
export interface SamplingOptions {
  readonly temperature: number
  readonly topP: number
  readonly topK: number
  readonly minP: number
  /** Always set: the scheduler draws a fresh random seed when the client gave none. */
  readonly seed: number
  readonly presencePenalty: number
  readonly frequencyPenalty: number
  readonly repeatPenalty: number
  /** When true, end-of-generation tokens are banned instead of ending the generation. */
  readonly ignoreEos: boolean
  /** Constrains output: `json` for any JSON object, `jsonSchema` for a given JSON schema. */
  readonly grammar?: GrammarConstraint | undefined
  /**
   * When set, each step reports the sampled token's log probability and this many (0–20) most likely alternatives,
   * under the distribution the token was sampled from. Left unset, nothing is computed.
   */
  readonly logprobs?: number | undefined
}

/** A grammar the backend enforces while sampling. */
export type GrammarConstraint =
  | { readonly _tag: "Json" }
  | { readonly _tag: "JsonSchema"; readonly schema: unknown }
  | ToolCallsConstraint

/** Tool calls in `syntax` to one of `functions`, arguments matching its schema; `allowText` also allows a text answer. */
export interface ToolCallsConstraint {
  readonly _tag: "ToolCalls"
  readonly syntax: ToolCallSyntax
  /** Each function's name and its arguments' JSON schema, as `toGrammarSchema` normalized it. */
  readonly functions: ReadonlyArray<{ readonly name: string; readonly schema: unknown }>
  readonly allowText: boolean
  readonly parallel: boolean
}

/** llama-server's defaults, so an empty request samples like it does. */
export const defaultSampling: Omit<SamplingOptions, "seed"> = {
  temperature: 0.8,
  topP: 0.95,
  topK: 40,
  minP: 0.05,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repeatPenalty: 1,
  ignoreEos: false
}
