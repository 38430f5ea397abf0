import { Schema } from "effect"
import { safeIdDescription, safeIdPattern } from "./SafeId.js"

// Unknown fields are tolerated: Schema.Struct ignores excess properties when decoding.
// `null` is accepted wherever a field is optional, as OpenAI's own API and many clients send it for "unset".

const optional = <S extends Schema.Schema.Any>(schema: S) => Schema.optionalWith(schema, { nullable: true })

/** What a valid value looks like; reported for a failed refinement, while a wrong JSON type reports itself. */
const expected = (text: string) => ({ message: () => text })

/** For leaves whose inner issues say less than this (a union of literals would report only its first member). */
const expectedExactly = (text: string) => ({ message: () => ({ message: text, override: true }) })

const PositiveInt = Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)).annotations(expected("an integer of at least 1"))
const NonNegativeInt = Schema.Int.pipe(Schema.greaterThanOrEqualTo(0)).annotations(expected("an integer of at least 0"))
const IntBetween = (min: number, max: number) =>
  Schema.Int.pipe(Schema.between(min, max)).annotations(expected(`an integer between ${min} and ${max}`))
const NumberBetween = (min: number, max: number) =>
  Schema.Number.pipe(Schema.between(min, max)).annotations(expected(`a number between ${min} and ${max}`))

/** A text content part; other part types (images, audio) are not supported by a text-only model. */
const TextPart = Schema.Struct({
  type: Schema.Literal("text").annotations(expectedExactly("\"text\" (only text content parts are supported)")),
  text: Schema.String
})

const MessageContent = Schema.Union(Schema.String, Schema.Array(TextPart))

/** One chat message; `developer` is OpenAI's newer name for `system`. */
export const ChatMessageInput = Schema.Struct({
  role: Schema.Literal("system", "developer", "user", "assistant").annotations(
    expectedExactly("one of \"system\", \"developer\", \"user\", \"assistant\"")
  ),
  content: optional(MessageContent),
  name: optional(Schema.String)
})
export type ChatMessageInput = typeof ChatMessageInput.Type

const JsonSchemaFormat = Schema.Struct({
  name: optional(Schema.String),
  description: optional(Schema.String),
  schema: Schema.Unknown.pipe(Schema.filter((value) => value !== undefined, { message: () => "is required" })),
  strict: optional(Schema.Boolean)
})

/** `response_format`: plain text, any JSON object, or JSON matching a schema. */
export const ResponseFormat = Schema.Union(
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({ type: Schema.Literal("json_schema"), json_schema: JsonSchemaFormat })
)
export type ResponseFormat = typeof ResponseFormat.Type

const Stop = Schema.Union(
  Schema.String,
  Schema.Array(Schema.String).pipe(Schema.maxItems(16))
).annotations(expected("a string or an array of at most 16 strings"))

/** vLLM's integer priority (lower is served first) or a named class. */
const Priority = Schema.Union(Schema.Int, Schema.Literal("high", "normal", "low")).annotations(
  expectedExactly("an integer (lower is served first) or one of \"high\", \"normal\", \"low\"")
)

/** Fields both endpoints share: OpenAI's, then llama-server/vLLM extensions, then Weft's per-request timeouts. */
const SharedFields = {
  model: Schema.String,
  max_tokens: optional(PositiveInt),
  max_completion_tokens: optional(PositiveInt),
  temperature: optional(NumberBetween(0, 2)),
  top_p: optional(NumberBetween(0, 1)),
  stop: optional(Stop),
  seed: optional(Schema.Int),
  presence_penalty: optional(NumberBetween(-2, 2)),
  frequency_penalty: optional(NumberBetween(-2, 2)),
  n: optional(PositiveInt),
  stream: optional(Schema.Boolean),
  stream_options: optional(Schema.Struct({ include_usage: optional(Schema.Boolean) })),
  user: optional(Schema.String),
  response_format: optional(ResponseFormat),
  top_k: optional(NonNegativeInt),
  min_p: optional(NumberBetween(0, 1)),
  repeat_penalty: optional(NumberBetween(0, 10)),
  ignore_eos: optional(Schema.Boolean),
  priority: optional(Priority),
  cache_salt: optional(Schema.String),
  timeout_queue_ms: optional(PositiveInt),
  timeout_first_token_ms: optional(PositiveInt),
  timeout_total_ms: optional(PositiveInt)
}

/** Body of `POST /v1/chat/completions`. */
export const ChatCompletionRequest = Schema.Struct({
  ...SharedFields,
  /** Weft extension: continue a server-kept conversation; `messages` then carries only this turn's new messages. */
  session_id: optional(Schema.String.pipe(Schema.pattern(safeIdPattern, { message: () => safeIdDescription }))),
  messages: Schema.Array(ChatMessageInput).annotations(expected("an array of messages")).pipe(
    Schema.minItems(1, { message: () => "a non-empty array of messages" })
  ),
  /** Report each generated token's log probability. */
  logprobs: optional(Schema.Boolean),
  /** With `logprobs`: how many most likely tokens to list at each position. */
  top_logprobs: optional(IntBetween(0, 20))
})
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

const TokenIds = Schema.Array(Schema.Int).pipe(Schema.minItems(1))

/** Body of `POST /v1/completions`. */
export const CompletionRequest = Schema.Struct({
  ...SharedFields,
  /** One prompt (text or token ids) or several, each answered with `n` choices. */
  prompt: Schema.Union(
    Schema.String,
    Schema.Array(Schema.String).pipe(Schema.minItems(1)),
    TokenIds,
    Schema.Array(TokenIds).pipe(Schema.minItems(1))
  ).annotations(
    expectedExactly("a string, a non-empty array of strings, an array of token ids or an array of such arrays")
  ),
  /** Legacy logprobs: the sampled token's and this many most likely tokens' log probabilities at each position. */
  logprobs: optional(IntBetween(0, 5))
})
export type CompletionRequest = typeof CompletionRequest.Type

/** The fields both request kinds share. */
export type SharedRequest = ChatCompletionRequest | CompletionRequest
