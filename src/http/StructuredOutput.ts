import { Effect, Stream } from "effect"
import { StructuredOutputInvalid } from "../engine/Backend.js"
import type { GrammarConstraint } from "../engine/SamplingOptions.js"
import { schemaViolation } from "../engine/llama/JsonSchemaValidator.js"
import { GenerationEvent } from "../scheduler/GenerationRequest.js"

/** Why `text` is not what `grammar` promises (JSON, matching its schema), or undefined when it is. */
export const outputViolation = (grammar: Exclude<GrammarConstraint, { readonly _tag: "ToolCalls" }>, text: string): string | undefined => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (error) {
    return `not JSON: ${error instanceof Error ? error.message : String(error)}`
  }
  if (grammar._tag === "Json") return typeof value === "object" && value !== null && !Array.isArray(value) ? undefined : "not a JSON object"
  return schemaViolation(grammar.schema, value)
}

/**
 * `events` with grammar-constrained output checked once it ends: output that stopped normally but does not parse or
 * validate ends as a `StructuredOutputInvalid` failure instead, never as a reply that claims to match. Output cut by
 * `max_tokens` is passed on as it is (`finish_reason: "length"` says it is incomplete).
 */
export const validatedOutput = <E, R>(
  grammar: GrammarConstraint | undefined,
  events: Stream.Stream<GenerationEvent, E, R>
): Stream.Stream<GenerationEvent, E, R> => {
  // Tool-call output is not checked here: the tool-call parser splits it into text and `tool_calls`, whose arguments
  // are held to their schemas by the grammar alone.
  if (grammar === undefined || grammar._tag === "ToolCalls") return events
  const pass = (text: string, event: GenerationEvent) => Effect.succeed<readonly [string, GenerationEvent]>([text, event])
  return Stream.mapAccumEffect(events, "", (text, event) => {
    if (event._tag === "Delta") return pass(text + event.text, event)
    if (event._tag !== "Finished" || event.finishReason !== "stop") return pass(text, event)
    const violation = outputViolation(grammar, text)
    if (violation === undefined) return pass(text, event)
    const error = new StructuredOutputInvalid({ violation })
    return Effect.zipRight(
      Effect.logError("Grammar-constrained output does not validate", error),
      pass(text, GenerationEvent.Finished({ ...event, finishReason: "error", error }))
    )
  })
}
