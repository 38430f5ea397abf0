import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Clock, Effect, Option, Schema, Stream } from "effect"
import type { ChatMessage } from "../engine/Backend.js"
import type { GenerationEvent, Usage } from "../scheduler/GenerationRequest.js"
import { SessionStore, StoredResponse } from "../sessions/SessionStore.js"
import { ToolCallParser } from "../engine/ToolCallParser.js"
import { generatedText, outcomeOf, splitToolCalls, sseHeaders, startedEvents } from "./GenerationResponse.js"
import type { Finished } from "./GenerationResponse.js"
import { InvalidParam, ResponseNotFound } from "./HttpErrors.js"
import { errorReply } from "./OpenAiErrors.js"
import type { ApiFailure } from "./OpenAiErrors.js"
import { readJsonBody } from "./JsonBody.js"
import { validatedOutput } from "./StructuredOutput.js"
import { resolveModel } from "./ModelRoute.js"
import { decodeRequest, planOf } from "./OpenAiMapping.js"
import { JsonSchemaFormat, NumberBetween, optional, PositiveInt } from "./OpenAiRequests.js"
import type { ChatCompletionRequest, ResponseFormat } from "./OpenAiRequests.js"
import type { ToolCallOutput } from "./OpenAiResponses.js"
import {
  chatToolFields,
  checkCallOutputs,
  conversationOf,
  InputItem,
  newItemId,
  outputItemsOf,
  ResponseFunctionTool,
  responsesToolParam,
  ResponseToolChoice,
  StreamedOutput
} from "./ResponseItems.js"
import type { ResponseEvent } from "./ResponseItems.js"
import { offeredTools } from "./ToolCalls.js"
import type { OpenAiRoutesOptions } from "./OpenAiRoutes.js"

/** `text.format`: the Responses API spells the JSON schema format flat. */
const TextFormat = Schema.Union(
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({ type: Schema.Literal("json_schema"), ...JsonSchemaFormat.fields })
)
type TextFormat = typeof TextFormat.Type

/** Body of `POST /v1/responses`; `seed` is a Weft extension, as on the other endpoints. */
export const ResponseCreateRequest = Schema.Struct({
  model: Schema.String,
  input: Schema.Union(
    Schema.String,
    Schema.Array(InputItem).pipe(Schema.minItems(1, { message: () => "a non-empty array of input items" }))
  ),
  tools: optional(Schema.Array(ResponseFunctionTool).pipe(Schema.maxItems(128))),
  tool_choice: optional(ResponseToolChoice),
  parallel_tool_calls: optional(Schema.Boolean),
  instructions: optional(Schema.String),
  max_output_tokens: optional(PositiveInt),
  temperature: optional(NumberBetween(0, 2)),
  top_p: optional(NumberBetween(0, 1)),
  text: optional(Schema.Struct({ format: optional(TextFormat) })),
  previous_response_id: optional(Schema.String),
  store: optional(Schema.Boolean),
  metadata: optional(Schema.Record({ key: Schema.String, value: Schema.String })),
  stream: optional(Schema.Boolean),
  seed: optional(Schema.Int),
  user: optional(Schema.String)
})
type ResponseCreateRequest = typeof ResponseCreateRequest.Type

const responseFormatOf = (format: TextFormat | undefined): ResponseFormat | undefined => {
  if (format === undefined || format.type !== "json_schema") return format
  const { type, ...json_schema } = format
  return { type, json_schema }
}

/** Grammar errors name chat's `response_format`; here the schema sits at `text.format.schema`. */
const renamed = (error: InvalidParam) =>
  error.param?.startsWith("response_format.json_schema.") === true
    ? new InvalidParam({
      param: `text.format.${error.param.slice("response_format.json_schema.".length)}`,
      message: error.message.replaceAll("response_format.json_schema.", "text.format."),
      code: error.code
    })
    : error

/** What a response object repeats from its request and identity. */
interface ResponseIdentity {
  readonly id: string
  readonly messageId: string
  readonly createdAt: number
  readonly model: string
  readonly body: ResponseCreateRequest
  readonly temperature: number
  readonly topP: number
}

type ResponseStatus = "in_progress" | "completed" | "incomplete" | "failed"

const usageBody = (usage: Usage) => ({
  input_tokens: usage.promptTokens,
  input_tokens_details: { cached_tokens: usage.cachedTokens },
  output_tokens: usage.completionTokens,
  output_tokens_details: { reasoning_tokens: 0 },
  total_tokens: usage.promptTokens + usage.completionTokens
})

/** The response object, in OpenAI's shape, at one point of its life. */
const responseObject = (
  identity: ResponseIdentity,
  state: {
    readonly status: ResponseStatus
    readonly output?: ReadonlyArray<unknown>
    readonly usage?: Usage
    readonly error?: { readonly code: string; readonly message: string }
  }
) => ({
  id: identity.id,
  object: "response",
  created_at: identity.createdAt,
  status: state.status,
  background: false,
  error: state.error ?? null,
  incomplete_details: state.status === "incomplete" ? { reason: "max_output_tokens" } : null,
  instructions: identity.body.instructions ?? null,
  max_output_tokens: identity.body.max_output_tokens ?? null,
  metadata: identity.body.metadata ?? {},
  model: identity.model,
  output: state.output ?? [],
  parallel_tool_calls: identity.body.parallel_tool_calls ?? true,
  previous_response_id: identity.body.previous_response_id ?? null,
  reasoning: { effort: null, summary: null },
  service_tier: "default",
  store: identity.body.store ?? true,
  temperature: identity.temperature,
  text: { format: identity.body.text?.format ?? { type: "text" } },
  tool_choice: identity.body.tool_choice ?? "auto",
  tools: identity.body.tools ?? [],
  top_p: identity.topP,
  truncation: "disabled",
  usage: state.usage === undefined ? null : usageBody(state.usage),
  user: identity.body.user ?? null
})

/** How a finished generation leaves its response: completed, or incomplete when `max_output_tokens` cut it. */
const statusOf = (reason: "stop" | "length") => (reason === "stop" ? "completed" : "incomplete")

/** The finished response, with its output items. */
const finishedObject = (identity: ResponseIdentity, output: ReadonlyArray<unknown>, finished: Finished, reason: "stop" | "length") =>
  responseObject(identity, { status: statusOf(reason), output, usage: finished.usage })

const failedObject = (identity: ResponseIdentity, failure: ApiFailure) => {
  const { error } = errorReply(failure)
  return responseObject(identity, { status: "failed", error: { code: error.code ?? "server_error", message: error.message } })
}

const responseIdParam = Effect.map(HttpRouter.params, (params) => params["id"] ?? "")

/** One SSE event of the Responses API: its type on the `event:` line and in the data, numbered in order. */
const sseEvent = (type: string, sequence: number, data: Record<string, unknown>) =>
  `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence, ...data })}\n\n`

const createResponse = (options: OpenAiRoutesOptions) =>
  Effect.gen(function*() {
    const body = yield* decodeRequest("responses", ResponseCreateRequest, yield* readJsonBody(options.maxBodyBytes))
    const { backend, scheduler } = yield* resolveModel(body.model)
    // The request as chat would take it, so tools and formats are checked and planned as on /v1/chat/completions.
    const chat: ChatCompletionRequest = {
      model: body.model,
      messages: [],
      max_tokens: body.max_output_tokens,
      temperature: body.temperature,
      top_p: body.top_p,
      seed: body.seed,
      response_format: responseFormatOf(body.text?.format),
      ...chatToolFields(body)
    }
    const plan = yield* planOf(chat, { maxTokens: undefined }, backend).pipe(
      Effect.mapError((error) => responsesToolParam(renamed(error)))
    )
    const store = yield* SessionStore
    // Responses carry no owner key yet: every client shares one prefix-cache namespace, as chat without cache_salt does.
    const cacheKey = ""
    const previousId = body.previous_response_id
    const history = previousId === undefined ? [] : yield* store.getResponse(previousId).pipe(
      Effect.flatMap(Option.match({
        onNone: () => Effect.fail(new ResponseNotFound({ responseId: previousId, param: "previous_response_id" })),
        onSome: (previous) => Effect.succeed(previous.messages)
      }))
    )
    const orphan = checkCallOutputs(history, body.input)
    if (orphan !== undefined) return yield* orphan
    const conversation = [...history, ...conversationOf(body.input)]
    // `instructions` apply to this response only: they go first in its prompt, not into the stored conversation.
    const instructions: ReadonlyArray<ChatMessage> = body.instructions === undefined ? [] : [{ role: "system", content: body.instructions }]
    const prompt = yield* backend.renderChat([...instructions, ...conversation], offeredTools(chat))
    const identity: ResponseIdentity = {
      id: newItemId("resp"),
      messageId: newItemId("msg"),
      createdAt: Math.floor((yield* Clock.currentTimeMillis) / 1000),
      model: backend.info.id,
      body,
      temperature: plan.request.sampling.temperature,
      topP: plan.request.sampling.topP
    }
    const events = validatedOutput(plan.request.sampling.grammar, scheduler.submit({ id: identity.id, prompt, ...plan.request }))

    /** Keeps a finished response for `GET` and `previous_response_id`, unless `store: false`. */
    const save = (text: string, calls: ReadonlyArray<ToolCallOutput>, object: unknown) =>
      body.store === false ? Effect.void : store.saveResponse(
        new StoredResponse({
          id: identity.id,
          cacheKey,
          messages: [...conversation, { role: "assistant", content: text, ...(calls.length === 0 ? {} : { toolCalls: calls }) }],
          body: object,
          createdAt: identity.createdAt * 1000
        })
      ).pipe(Effect.catchAll((error) => Effect.logError("The response could not be stored", error)))

    if (body.stream !== true) {
      const { finished, reason, text: output } = yield* generatedText(events)
      const { calls, text } = plan.toolSyntax === undefined ? { calls: [], text: output } : splitToolCalls(plan.toolSyntax, output)
      const object = finishedObject(identity, outputItemsOf(identity.messageId, text, calls, statusOf(reason)), finished, reason)
      yield* save(text, calls, object)
      return HttpServerResponse.unsafeJson(object)
    }

    // With tools, the output goes through a tool-call parser: call markup becomes function_call items, never text.
    const parser = plan.toolSyntax === undefined ? undefined : new ToolCallParser(plan.toolSyntax)
    const output = new StreamedOutput(identity.messageId)
    const framesOf = (sequence: number, event: GenerationEvent) => {
      const frames: Array<string> = []
      const emit = (type: string, data: Record<string, unknown>) => frames.push(sseEvent(type, sequence++, data))
      const emitAll = (events: ReadonlyArray<ResponseEvent>) => events.forEach(({ data, type }) => emit(type, data))
      const done = () => Effect.succeed([sequence, frames] as const)
      switch (event._tag) {
        case "Started": {
          const response = responseObject(identity, { status: "in_progress" })
          emit("response.created", { response })
          emit("response.in_progress", { response })
          // Without tools the output is one message: it opens at once, as OpenAI's does.
          if (parser === undefined) emitAll(output.openMessage())
          return done()
        }
        case "Delta":
          if (parser === undefined) emitAll(output.push({ _tag: "Text", text: event.text }))
          else if (event.text !== "") parser.push(event.text).forEach((parsed) => emitAll(output.push(parsed)))
          return done()
        case "Finished":
          return Effect.flatMap(outcomeOf(event), (outcome) => {
            if (outcome._tag === "Failed") {
              emit("response.failed", { response: failedObject(identity, outcome.failure) })
              return done()
            }
            parser?.finish().forEach((parsed) => emitAll(output.push(parsed)))
            const finished = output.finish(statusOf(outcome.reason))
            emitAll(finished.events)
            const object = finishedObject(identity, finished.output, event, outcome.reason)
            emit(outcome.reason === "stop" ? "response.completed" : "response.incomplete", { response: object })
            return Effect.zipRight(save(output.text, output.calls, object), done())
          })
      }
    }
    const started = yield* startedEvents(events, (event) => event)
    const frames = started.pipe(Stream.mapAccumEffect(0, framesOf), Stream.flattenIterables, Stream.encodeText)
    return HttpServerResponse.stream(frames, sseHeaders)
  }).pipe(Effect.withSpan("http.responses"))

/** `POST /v1/responses`, `GET /v1/responses/{id}` and `DELETE /v1/responses/{id}`: OpenAI's Responses API. */
export const responsesRoutes = (options: OpenAiRoutesOptions) =>
  HttpRouter.empty.pipe(
    HttpRouter.post("/v1/responses", createResponse(options)),
    HttpRouter.get(
      "/v1/responses/:id",
      Effect.gen(function*() {
        const responseId = yield* responseIdParam
        const stored = yield* Effect.flatMap(SessionStore, (store) => store.getResponse(responseId))
        if (Option.isNone(stored)) return yield* new ResponseNotFound({ responseId, param: null })
        return HttpServerResponse.unsafeJson(stored.value.body)
      })
    ),
    HttpRouter.del(
      "/v1/responses/:id",
      Effect.gen(function*() {
        const responseId = yield* responseIdParam
        const deleted = yield* Effect.flatMap(SessionStore, (store) => store.removeResponse(responseId))
        if (!deleted) return yield* new ResponseNotFound({ responseId, param: null })
        return HttpServerResponse.unsafeJson({ id: responseId, object: "response.deleted", deleted: true })
      })
    )
  )
