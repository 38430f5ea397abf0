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
const NumberBetween = (min: number, max: number) =>
  Schema.Number.pipe(Schema.between(min, max)).annotations(expected(`a number between ${min} and ${max}`))

/** A text content part; other part types (images, audio) are not supported by a text-only model. */
const TextPart = Schema.Struct({
  type: Schema.Literal("text").annotations(expectedExactly("\"text\" (only text content parts are supported)")),
  text: Schema.String
})

const MessageContent = Schema.Union(Schema.String, Schema.Array(TextPart))

/** A function name as OpenAI allows it, so it can be written into a grammar and a prompt as is. */
const FunctionName = Schema.String.pipe(Schema.pattern(/^[a-zA-Z0-9_-]{1,64}$/)).annotations(
  expected("a function name of 1 to 64 letters, digits, underscores or dashes")
)

/** A tool call an assistant message made, as the history carries it. */
const ToolCallInput = Schema.Struct({
  id: Schema.String,
  type: Schema.Literal("function").annotations(expectedExactly("\"function\" (only function tools are supported)")),
  function: Schema.Struct({ name: FunctionName, arguments: Schema.String })
})

/** One chat message; `developer` is OpenAI's newer name for `system`; `tool` carries the result of a tool call. */
export const ChatMessageInput = Schema.Struct({
  role: Schema.Literal("system", "developer", "user", "assistant", "tool").annotations(
    expectedExactly("one of \"system\", \"developer\", \"user\", \"assistant\", \"tool\"")
  ),
  content: optional(MessageContent),
  name: optional(Schema.String),
  tool_calls: optional(Schema.Array(ToolCallInput)),
  tool_call_id: optional(Schema.String)
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

/** A function the model may call; `parameters` is the JSON schema of its arguments object. */
export const ToolInput = Schema.Struct({
  type: Schema.Literal("function").annotations(expectedExactly("\"function\" (only function tools are supported)")),
  function: Schema.Struct({
    name: FunctionName,
    description: optional(Schema.String),
    parameters: optional(Schema.Unknown),
    strict: optional(Schema.Boolean)
  })
})
export type ToolInput = typeof ToolInput.Type

/** `tool_choice`: let the model decide, never call, always call, or call the named function. */
export const ToolChoice = Schema.Union(
  Schema.Literal("none", "auto", "required"),
  Schema.Struct({ type: Schema.Literal("function"), function: Schema.Struct({ name: Schema.String }) })
).annotations(expectedExactly("\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}"))
export type ToolChoice = typeof ToolChoice.Type

/** Body of `POST /v1/chat/completions`. */
export const ChatCompletionRequest = Schema.Struct({
  ...SharedFields,
  tools: optional(Schema.Array(ToolInput).pipe(Schema.maxItems(128))),
  tool_choice: optional(ToolChoice),
  parallel_tool_calls: optional(Schema.Boolean),
  /** Weft extension: continue a server-kept conversation; `messages` then carries only this turn's new messages. */
  session_id: optional(Schema.String.pipe(Schema.pattern(safeIdPattern, { message: () => safeIdDescription }))),
  messages: Schema.Array(ChatMessageInput).annotations(expected("an array of messages")).pipe(
    Schema.minItems(1, { message: () => "a non-empty array of messages" })
  )
})
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

/** Body of `POST /v1/completions`. */
export const CompletionRequest = Schema.Struct({
  ...SharedFields,
  prompt: Schema.Union(Schema.String, Schema.Array(Schema.String).pipe(Schema.minItems(1))).annotations(
    expectedExactly("a string or a non-empty array of strings")
  )
})
export type CompletionRequest = typeof CompletionRequest.Type

/** The fields both request kinds share. */
export type SharedRequest = ChatCompletionRequest | CompletionRequest
