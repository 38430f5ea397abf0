import { Schema } from "effect"
import { safeIdDescription, safeIdPattern } from "./SafeId.js"

// Unknown fields are tolerated: Schema.Struct ignores excess properties when decoding.
// `null` is accepted wherever a field is optional, as OpenAI's own API and many clients send it for "unset".

export const optional = <S extends Schema.Schema.Any>(schema: S) => Schema.optionalWith(schema, { nullable: true })

/** What a valid value looks like; reported for a failed refinement, while a wrong JSON type reports itself. */
const expected = (text: string) => ({ message: () => text })

/** For leaves whose inner issues say less than this (a union of literals would report only its first member). */
export const expectedExactly = (text: string) => ({ message: () => ({ message: text, override: true }) })

export const PositiveInt = Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)).annotations(expected("an integer of at least 1"))
const NonNegativeInt = Schema.Int.pipe(Schema.greaterThanOrEqualTo(0)).annotations(expected("an integer of at least 0"))
const IntBetween = (min: number, max: number) =>
  Schema.Int.pipe(Schema.between(min, max)).annotations(expected(`an integer between ${min} and ${max}`))
export const NumberBetween = (min: number, max: number) =>
  Schema.Number.pipe(Schema.between(min, max)).annotations(expected(`a number between ${min} and ${max}`))

/** A text content part; other part types (images, audio) are not supported by a text-only model. */
const TextPart = Schema.Struct({
  type: Schema.Literal("text").annotations(expectedExactly("\"text\" (only text content parts are supported)")),
  text: Schema.String
})

const MessageContent = Schema.Union(Schema.String, Schema.Array(TextPart))

/** A function name as OpenAI allows it, so it can be written into a grammar and a prompt as is. */
export const FunctionName = Schema.String.pipe(Schema.pattern(/^[a-zA-Z0-9_-]{1,64}$/)).annotations(
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

export const JsonSchemaFormat = Schema.Struct({
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

/** What a function tool declares (chat nests it under `function`; the Responses API spells it flat). */
export const FunctionToolFields = {
  name: FunctionName,
  description: optional(Schema.String),
  parameters: optional(Schema.Unknown),
  strict: optional(Schema.Boolean)
}

/** A tool's `type`: only functions. */
export const FunctionToolType = Schema.Literal("function").annotations(expectedExactly("\"function\" (only function tools are supported)"))

/** A function the model may call; `parameters` is the JSON schema of its arguments object. */
export const ToolInput = Schema.Struct({
  type: FunctionToolType,
  function: Schema.Struct(FunctionToolFields)
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

/** The OpenAI endpoints whose bodies the unsupported-parameter table covers. */
export type OpenAiEndpoint = "chat" | "completions" | "responses"

/** A known OpenAI parameter Weft does not implement, where it applies, and when a value counts as asking for it. */
export interface UnsupportedParam {
  readonly param: string
  readonly endpoints: ReadonlyArray<OpenAiEndpoint>
  /** True when the value asks for the feature; `null`, absent and default values never do. */
  readonly used: (value: unknown) => boolean
  /** What to do instead, appended to the message. */
  readonly hint?: string
  /** A value that uses it, as a client would send it (the table-driven test sends each). */
  readonly example: unknown
}

const present = (value: unknown) => value !== undefined && value !== null
const notEmpty = (value: unknown) =>
  present(value) && value !== false &&
  !(Array.isArray(value) && value.length === 0) &&
  !(typeof value === "object" && value !== null && !Array.isArray(value) && Object.keys(value).length === 0)
const other = (...allowed: ReadonlyArray<unknown>) => (value: unknown) => present(value) && !allowed.includes(value)

const all: ReadonlyArray<OpenAiEndpoint> = ["chat", "completions", "responses"]

/**
 * Known OpenAI parameters this server does not implement: a request that uses one gets a 400 naming it rather than a
 * reply that silently ignores it. Unknown fields stay tolerated. The README's parameter list is this table.
 */
export const unsupportedParams: ReadonlyArray<UnsupportedParam> = [
  { param: "logit_bias", endpoints: ["chat", "completions"], used: notEmpty , example: { "50256": -100 } },
  { param: "audio", endpoints: ["chat"], used: present, hint: "this server generates text only" , example: { voice: "alloy", format: "mp3" } },
  {
    param: "modalities",
    endpoints: ["chat"],
    used: (value) => present(value) && !(Array.isArray(value) && value.every((each) => each === "text")),
    hint: "only [\"text\"] is supported",
    example: ["text", "audio"]
  },
  { param: "prediction", endpoints: ["chat"], used: present , example: { type: "content", content: "x" } },
  { param: "web_search_options", endpoints: ["chat"], used: present , example: {} },
  { param: "moderation", endpoints: ["chat", "responses"], used: present , example: { model: "omni-moderation-latest" } },
  { param: "service_tier", endpoints: all, used: other("auto", "default"), hint: "only \"auto\" and \"default\" are supported" , example: "flex" },
  { param: "store", endpoints: ["chat"], used: (value) => value === true, hint: "use session_id to keep a conversation on the server" , example: true },
  { param: "metadata", endpoints: ["chat", "completions"], used: notEmpty, hint: "metadata is kept only with stored responses (/v1/responses)" , example: { k: "v" } },
  { param: "functions", endpoints: ["chat"], used: present, hint: "use `tools` instead" , example: [{ name: "f", parameters: {} }] },
  { param: "function_call", endpoints: ["chat"], used: present, hint: "use `tool_choice` instead" , example: "auto" },
  { param: "reasoning_effort", endpoints: ["chat"], used: present , example: "low" },
  { param: "verbosity", endpoints: ["chat"], used: present , example: "low" },
  { param: "suffix", endpoints: ["completions"], used: (value) => typeof value === "string" && value !== "" , example: "end" },
  { param: "best_of", endpoints: ["completions"], used: other(1) , example: 2 },
  { param: "echo", endpoints: ["completions"], used: (value) => value === true , example: true },
  { param: "reasoning", endpoints: ["responses"], used: (value) => typeof value === "object" && value !== null && Object.values(value).some(present) , example: { effort: "low" } },
  { param: "background", endpoints: ["responses"], used: (value) => value === true , example: true },
  { param: "conversation", endpoints: ["responses"], used: present, hint: "use `previous_response_id` instead" , example: "conv_1" },
  { param: "include", endpoints: ["responses"], used: notEmpty , example: ["message.output_text.logprobs"] },
  { param: "prompt", endpoints: ["responses"], used: present, hint: "send `input` and `instructions` instead" , example: { id: "pmpt_1" } },
  { param: "truncation", endpoints: ["responses"], used: other("disabled") , example: "auto" },
  { param: "context_management", endpoints: ["responses"], used: present , example: [{ type: "compaction" }] },
  { param: "top_logprobs", endpoints: ["responses"], used: other(0) , example: 2 }
]

/** The first known-but-unimplemented parameter `body` uses on `endpoint`, if any. */
export const unsupportedParamIn = (endpoint: OpenAiEndpoint, body: Readonly<Record<string, unknown>>): UnsupportedParam | undefined =>
  unsupportedParams.find((entry) => entry.endpoints.includes(endpoint) && Object.hasOwn(body, entry.param) && entry.used(body[entry.param]))
