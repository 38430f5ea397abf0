import { Effect, Either, ParseResult, Schema } from "effect"
import type { BackendShape, ChatMessage, PromptTooLarge } from "../engine/Backend.js"
import { defaultSampling } from "../engine/SamplingOptions.js"
import type { GrammarConstraint } from "../engine/SamplingOptions.js"
import { toGrammarSchema } from "../engine/llama/JsonSchemaGrammar.js"
import type { ToolCallSyntax } from "../engine/ToolCallSyntax.js"
import type { GenerationRequest, Priority } from "../scheduler/GenerationRequest.js"
import { InvalidParam } from "./HttpErrors.js"
import { quoteValue, shorten } from "./QuotedValue.js"
import { unsupportedParamIn } from "./OpenAiRequests.js"
import type { ChatCompletionRequest, ChatMessageInput, CompletionRequest, OpenAiEndpoint, ResponseFormat, SharedRequest } from "./OpenAiRequests.js"
import { offeredTools, toolPlanOf } from "./ToolCalls.js"

/** Everything about a generation except its id and prompt, and how to answer it. */
export interface GenerationPlan {
  readonly request: Omit<GenerationRequest, "id" | "prompt">
  /** Choices per prompt, each a generation of its own. */
  readonly n: number
  readonly stream: boolean
  readonly includeUsage: boolean
  /** Set when the output may hold tool calls in this syntax (chat requests with tools). */
  readonly toolSyntax?: ToolCallSyntax | undefined
}

/**
 * Most choices one request may fan out to (`n` times the prompts): each takes a queue place and a slot like a
 * request of its own.
 */
export const maxChoices = 16

type PathSegment = PropertyKey

const formatPath = (path: ReadonlyArray<PathSegment>): string =>
  path.reduce<string>(
    (text, segment) => (typeof segment === "number" ? `${text}[${segment}]` : text === "" ? String(segment) : `${text}.${String(segment)}`),
    ""
  )

const valueAt = (input: unknown, path: ReadonlyArray<PathSegment>): unknown =>
  path.reduce<unknown>(
    (value, segment) => (typeof value === "object" && value !== null ? (value as Record<PropertyKey, unknown>)[segment] : undefined),
    input
  )

/** Optional fields also accept `null`/`undefined`; those alternatives only add noise to a report. */
const isNullableNoise = (issue: ParseResult.ArrayFormatterIssue) =>
  issue._tag === "Type" && /^Expected (null|undefined), actual /.test(issue.message)

/** The issue worth reporting: the most specific (deepest) one that is not about the null alternative. */
const reportedIssue = (issues: ReadonlyArray<ParseResult.ArrayFormatterIssue>) => {
  const useful = issues.filter((issue) => !isNullableNoise(issue))
  const candidates = useful.length > 0 ? useful : issues
  return candidates.reduce((best, issue) => (issue.path.length > best.path.length ? issue : best), candidates[0]!)
}

/**
 * What was expected and what came, quoting at most a short prefix of the value: schema's own "Expected X, actual Y"
 * would quote all of it.
 */
const detailOf = (issueMessage: string, quoted: string): string => {
  if (!issueMessage.startsWith("Expected ")) return `expected ${issueMessage}, got ${quoted}`
  const actualAt = issueMessage.indexOf(", actual ")
  return actualAt === -1 ? shorten(issueMessage, 300) : `${issueMessage.slice(0, actualAt)}, actual ${quoted}`
}

/** Decodes a JSON body with `schema`, failing with a 400 that names the offending parameter. */
export const decodeBody = <A, I>(schema: Schema.Schema<A, I>, body: unknown): Effect.Effect<A, InvalidParam> => {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return Effect.fail(new InvalidParam({ param: null, message: "The request body must be a JSON object", code: "invalid_type" }))
  }
  return Schema.decodeUnknown(schema, { errors: "all" })(body).pipe(
    Effect.mapError((error) => {
      const issue = reportedIssue(ParseResult.ArrayFormatter.formatErrorSync(error))
      const param = formatPath(issue.path)
      if (issue._tag === "Missing") {
        return new InvalidParam({ param, message: `Missing required parameter: '${param}'.`, code: "missing_required_parameter" })
      }
      const detail = detailOf(issue.message, quoteValue(valueAt(body, issue.path)))
      return new InvalidParam({
        param,
        message: `Invalid value for '${param}': ${detail}`,
        code: issue._tag === "Type" ? "invalid_type" : "invalid_value"
      })
    })
  )
}

/**
 * Decodes the body of an `endpoint` request like `decodeBody`, first refusing any known OpenAI parameter this server
 * does not implement (`unsupportedParams`) with a 400 naming it, so no request is silently answered without it.
 */
export const decodeRequest = <A, I>(endpoint: OpenAiEndpoint, schema: Schema.Schema<A, I>, body: unknown): Effect.Effect<A, InvalidParam> => {
  const unsupported = typeof body === "object" && body !== null && !Array.isArray(body)
    ? unsupportedParamIn(endpoint, body as Record<string, unknown>)
    : undefined
  if (unsupported === undefined) return decodeBody(schema, body)
  const hint = unsupported.hint === undefined ? "" : ` (${unsupported.hint})`
  return Effect.fail(new InvalidParam({
    param: unsupported.param,
    message: `The parameter '${unsupported.param}' is not supported by this server${hint}.`,
    code: "unsupported_parameter"
  }))
}

/** How many alternatives to report per token, or undefined for no logprobs: chat's `logprobs`/`top_logprobs`, or legacy `logprobs`. */
const logprobsOf = (body: SharedRequest): Effect.Effect<number | undefined, InvalidParam> => {
  if (!("messages" in body)) return Effect.succeed(body.logprobs)
  if (body.logprobs === true) return Effect.succeed(body.top_logprobs ?? 0)
  if (body.top_logprobs !== undefined && body.top_logprobs > 0) {
    return Effect.fail(new InvalidParam({ param: "top_logprobs", message: "top_logprobs requires logprobs to be true", code: "invalid_value" }))
  }
  return Effect.succeed(undefined)
}

const priorityOf = (priority: SharedRequest["priority"]): Priority | undefined => {
  if (priority === undefined) return undefined
  if (typeof priority === "string") return priority
  return priority < 0 ? "high" : priority > 0 ? "low" : "normal"
}

const schemaParam = (at: string) => `response_format.json_schema.schema${at === "" ? "" : `.${at}`}`

const invalidSchema = (param: string, message: string) =>
  new InvalidParam({ param, message: `Invalid JSON schema at '${param}': ${message}`, code: "invalid_json_schema" })

/**
 * The grammar constraint of `format`, checked before admission: first against what the grammar builder supports
 * (naming the keyword), then by having the engine build it, so a schema llama.cpp cannot parse never takes a slot.
 */
const grammarOf = (
  format: ResponseFormat | undefined,
  backend: BackendShape
): Effect.Effect<GrammarConstraint | undefined, InvalidParam> => {
  if (format === undefined || format.type === "text") return Effect.succeed(undefined)
  if (format.type === "json_object") return Effect.succeed({ _tag: "Json" })
  return Either.match(toGrammarSchema(format.json_schema.schema), {
    onLeft: (problem) => Effect.fail(invalidSchema(schemaParam(problem.at), problem.message)),
    onRight: (schema) => {
      const constraint = { _tag: "JsonSchema", schema } as const
      return Effect.as(
        Effect.mapError(backend.checkGrammar(constraint), (rejected) =>
          invalidSchema(schemaParam(""), `the engine could not build a grammar for this schema (${rejected.message})`)),
        constraint
      )
    }
  })
}

/** Validates what the schema cannot (n, stop strings) and maps the parameters to a scheduler request. */
export const planOf = (
  body: SharedRequest,
  defaults: { readonly maxTokens: number | undefined },
  backend: BackendShape
): Effect.Effect<GenerationPlan, InvalidParam> =>
  Effect.gen(function*() {
    const n = body.n ?? 1
    if (n > maxChoices) {
      return yield* new InvalidParam({ param: "n", message: `n must be at most ${maxChoices}: each choice takes a slot of its own`, code: "invalid_value" })
    }
    const logprobs = yield* logprobsOf(body)
    const stop = body.stop === undefined ? [] : typeof body.stop === "string" ? [body.stop] : body.stop
    const tools = "messages" in body ? yield* toolPlanOf(body, backend) : undefined
    const grammar = tools?.constraint ?? (yield* grammarOf(body.response_format, backend))
    if (grammar !== undefined && body.ignore_eos === true) {
      return yield* new InvalidParam({
        param: "ignore_eos",
        message: tools === undefined
          ? "ignore_eos cannot be combined with a json_object or json_schema response_format: the grammar decides where the output ends"
          : "ignore_eos cannot be combined with tools (unless tool_choice is \"none\"): the tool-call grammar decides where the output ends",
        code: "unsupported_value"
      })
    }
    if (tools !== undefined && logprobs !== undefined) {
      return yield* new InvalidParam({
        param: "logprobs",
        message: "logprobs cannot be combined with tools (unless tool_choice is \"none\"): tool-call output is not scored token by token",
        code: "unsupported_value"
      })
    }
    const seed = body.seed === undefined || body.seed === -1 ? undefined : body.seed >>> 0
    return {
      request: {
        sampling: {
          temperature: body.temperature ?? defaultSampling.temperature,
          topP: body.top_p ?? defaultSampling.topP,
          topK: body.top_k ?? defaultSampling.topK,
          minP: body.min_p ?? defaultSampling.minP,
          presencePenalty: body.presence_penalty ?? defaultSampling.presencePenalty,
          frequencyPenalty: body.frequency_penalty ?? defaultSampling.frequencyPenalty,
          repeatPenalty: body.repeat_penalty ?? defaultSampling.repeatPenalty,
          ignoreEos: body.ignore_eos ?? defaultSampling.ignoreEos,
          seed,
          grammar,
          logprobs
        },
        maxTokens: body.max_completion_tokens ?? body.max_tokens ?? defaults.maxTokens,
        stop: stop.filter((text) => text.length > 0),
        priority: priorityOf(body.priority),
        // vLLM's `cache_salt`: only requests with the same salt reuse each other's cached prompt prefixes.
        cacheKey: body.cache_salt,
        timeouts: {
          queueMs: body.timeout_queue_ms,
          firstTokenMs: body.timeout_first_token_ms,
          totalMs: body.timeout_total_ms
        }
      },
      n,
      stream: body.stream ?? false,
      includeUsage: body.stream_options?.include_usage ?? false,
      toolSyntax: tools?.syntax
    }
  })

const messageText = (content: ChatMessageInput["content"]): string =>
  content === undefined ? "" : typeof content === "string" ? content : content.map((part) => part.text).join("")

/**
 * OpenAI messages as the chat template takes them (`developer` is a system message, content parts joined, an
 * assistant's tool calls and a tool result's call id kept).
 */
export const chatMessagesOf = (messages: ReadonlyArray<ChatMessageInput>): ReadonlyArray<ChatMessage> =>
  messages.map((message): ChatMessage => ({
    role: message.role === "developer" ? "system" : message.role,
    content: messageText(message.content),
    ...(message.role === "assistant" && message.tool_calls !== undefined && message.tool_calls.length > 0
      ? { toolCalls: message.tool_calls.map((call) => ({ id: call.id, name: call.function.name, arguments: call.function.arguments })) }
      : {}),
    ...(message.role === "tool" && message.tool_call_id !== undefined ? { toolCallId: message.tool_call_id } : {})
  }))

/** A 400 for the first `tool` message whose `tool_call_id` answers no call of an assistant message before it. */
const unansweredToolMessage = (messages: ReadonlyArray<ChatMessageInput>): InvalidParam | undefined => {
  const calls = new Set<string>()
  for (const [index, message] of messages.entries()) {
    message.tool_calls?.forEach((call) => calls.add(call.id))
    if (message.role === "tool" && message.tool_call_id !== undefined && !calls.has(message.tool_call_id)) {
      return new InvalidParam({
        param: `messages[${index}].tool_call_id`,
        message: `Invalid value for 'messages[${index}].tool_call_id': no tool call with id '${message.tool_call_id}' comes before this tool message`,
        code: "invalid_value"
      })
    }
  }
  return undefined
}

/**
 * A chat request's prompt, rendered with the model's own chat template and the tools offered to it. A tool message
 * answering no earlier call is refused: the template would leave it out.
 */
export const chatPrompt = (backend: BackendShape, body: ChatCompletionRequest) => {
  const unanswered = unansweredToolMessage(body.messages)
  return unanswered === undefined ? backend.renderChat(chatMessagesOf(body.messages), offeredTools(body)) : Effect.fail(unanswered)
}

/**
 * A completion's prompts as tokens, one list per prompt. Text gets BOS first when the model has one, and its
 * special-token text is parsed, as llama-server does for raw prompts, so a prompt can spell out a template by hand;
 * token ids are taken as they are.
 */
export const completionPrompts = (
  backend: BackendShape,
  prompt: CompletionRequest["prompt"],
  n: number
): Effect.Effect<ReadonlyArray<ReadonlyArray<number>>, InvalidParam | PromptTooLarge> =>
  Effect.gen(function*() {
    const prompts: ReadonlyArray<string | ReadonlyArray<number>> = typeof prompt === "string"
      ? [prompt]
      : prompt.every((part) => typeof part === "number")
      ? [prompt as ReadonlyArray<number>]
      : prompt as ReadonlyArray<string | ReadonlyArray<number>>
    if (prompts.length * n > maxChoices) {
      return yield* new InvalidParam({
        param: "n",
        message: `${prompts.length} prompts × n=${n} is more than ${maxChoices} choices: each choice takes a slot of its own`,
        code: "invalid_value"
      })
    }
    const vocabSize = backend.info.vocabSize
    const tokenized: Array<ReadonlyArray<number>> = []
    for (const [index, part] of prompts.entries()) {
      if (typeof part !== "string") {
        const bad = part.find((token) => token < 0 || token >= vocabSize)
        if (bad !== undefined) {
          return yield* new InvalidParam({ param: "prompt", message: `Prompt ${index} has token id ${bad}, outside the vocabulary (0–${vocabSize - 1})`, code: "invalid_value" })
        }
        tokenized.push(part)
        continue
      }
      const tokens = yield* backend.tokenize(part, { special: true })
      const bos = backend.info.bosToken
      tokenized.push(bos === undefined || !backend.info.addBosToken || tokens[0] === bos ? tokens : [bos, ...tokens])
    }
    return tokenized
  })
