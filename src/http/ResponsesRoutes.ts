// Just over 300 lines: the three /v1/responses routes share the response object and its streamed event sequence.
import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Clock, Effect, Option, Schema, Stream } from "effect"
import { randomUUID } from "node:crypto"
import type { ChatMessage } from "../engine/Backend.js"
import type { GenerationEvent, Usage } from "../scheduler/GenerationRequest.js"
import { SessionStore, StoredResponse } from "../sessions/SessionStore.js"
import { generatedText, outcomeOf, sseHeaders, startedEvents } from "./GenerationResponse.js"
import type { Finished } from "./GenerationResponse.js"
import { InvalidParam, ResponseNotFound } from "./HttpErrors.js"
import { errorReply } from "./OpenAiErrors.js"
import type { ApiFailure } from "./OpenAiErrors.js"
import { readJsonBody } from "./JsonBody.js"
import { validatedOutput } from "./StructuredOutput.js"
import { resolveModel } from "./ModelRoute.js"
import { decodeRequest, planOf } from "./OpenAiMapping.js"
import { expectedExactly, JsonSchemaFormat, NumberBetween, optional, PositiveInt } from "./OpenAiRequests.js"
import type { ResponseFormat } from "./OpenAiRequests.js"
import type { OpenAiRoutesOptions } from "./OpenAiRoutes.js"

/** A text content part of an input message; earlier assistant output comes back as `output_text`. */
const InputTextPart = Schema.Struct({
  type: Schema.Literal("input_text", "output_text").annotations(
    expectedExactly("\"input_text\" or \"output_text\" (only text content parts are supported)")
  ),
  text: Schema.String
})

/** One input message item. */
const InputMessage = Schema.Struct({
  type: optional(Schema.Literal("message").annotations(expectedExactly("\"message\" (only message items are supported)"))),
  role: Schema.Literal("system", "developer", "user", "assistant").annotations(
    expectedExactly("one of \"system\", \"developer\", \"user\", \"assistant\"")
  ),
  content: Schema.Union(Schema.String, Schema.Array(InputTextPart))
})
type InputMessage = typeof InputMessage.Type

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
    Schema.Array(InputMessage).pipe(Schema.minItems(1, { message: () => "a non-empty array of message items" }))
  ),
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

/** A message of a Responses conversation: no tool turns, so it is stored as it is. */
type ConversationMessage = ChatMessage & { readonly role: "system" | "user" | "assistant" }

const messagesOf = (input: ResponseCreateRequest["input"]): ReadonlyArray<ConversationMessage> =>
  typeof input === "string"
    ? [{ role: "user", content: input }]
    : input.map((item: InputMessage): ConversationMessage => ({
      role: item.role === "developer" ? "system" : item.role,
      content: typeof item.content === "string" ? item.content : item.content.map((part) => part.text).join("")
    }))

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

const outputText = (text: string) => ({ type: "output_text", text, annotations: [], logprobs: [] })

const messageItem = (identity: ResponseIdentity, status: "in_progress" | "completed" | "incomplete", content: ReadonlyArray<unknown>) => ({
  type: "message",
  id: identity.messageId,
  status,
  role: "assistant",
  content
})

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
  parallel_tool_calls: false,
  previous_response_id: identity.body.previous_response_id ?? null,
  reasoning: { effort: null, summary: null },
  service_tier: "default",
  store: identity.body.store ?? true,
  temperature: identity.temperature,
  text: { format: identity.body.text?.format ?? { type: "text" } },
  tool_choice: "none",
  tools: [],
  top_p: identity.topP,
  truncation: "disabled",
  usage: state.usage === undefined ? null : usageBody(state.usage),
  user: identity.body.user ?? null
})

/** The finished response: completed, or incomplete when `max_output_tokens` cut it. */
const finishedObject = (identity: ResponseIdentity, text: string, finished: Finished, reason: "stop" | "length") => {
  const status = reason === "stop" ? "completed" : "incomplete"
  return responseObject(identity, { status, output: [messageItem(identity, status, [outputText(text)])], usage: finished.usage })
}

const failedObject = (identity: ResponseIdentity, failure: ApiFailure) => {
  const { error } = errorReply(failure)
  return responseObject(identity, { status: "failed", error: { code: error.code ?? "server_error", message: error.message } })
}

const responseIdParam = Effect.map(HttpRouter.params, (params) => params["id"] ?? "")

const newId = (prefix: string) => `${prefix}_${randomUUID().replaceAll("-", "")}`

/** One SSE event of the Responses API: its type on the `event:` line and in the data, numbered in order. */
const sseEvent = (type: string, sequence: number, data: Record<string, unknown>) =>
  `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence, ...data })}\n\n`

const createResponse = (options: OpenAiRoutesOptions) =>
  Effect.gen(function*() {
    const body = yield* decodeRequest("responses", ResponseCreateRequest, yield* readJsonBody(options.maxBodyBytes))
    const { backend, scheduler } = yield* resolveModel(body.model)
    const plan = yield* planOf(
      {
        model: body.model,
        messages: [],
        max_tokens: body.max_output_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        seed: body.seed,
        response_format: responseFormatOf(body.text?.format)
      },
      { maxTokens: undefined },
      backend
    ).pipe(Effect.mapError(renamed))
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
    const conversation = [...history, ...messagesOf(body.input)]
    // `instructions` apply to this response only: they go first in its prompt, not into the stored conversation.
    const instructions: ReadonlyArray<ChatMessage> = body.instructions === undefined ? [] : [{ role: "system", content: body.instructions }]
    const prompt = yield* backend.renderChat([...instructions, ...conversation])
    const identity: ResponseIdentity = {
      id: newId("resp"),
      messageId: newId("msg"),
      createdAt: Math.floor((yield* Clock.currentTimeMillis) / 1000),
      model: backend.info.id,
      body,
      temperature: plan.request.sampling.temperature,
      topP: plan.request.sampling.topP
    }
    const events = validatedOutput(plan.request.sampling.grammar, scheduler.submit({ id: identity.id, prompt, ...plan.request }))

    /** Keeps a finished response for `GET` and `previous_response_id`, unless `store: false`. */
    const save = (text: string, object: unknown) =>
      body.store === false ? Effect.void : store.saveResponse(
        new StoredResponse({
          id: identity.id,
          cacheKey,
          messages: [...conversation, { role: "assistant", content: text }],
          body: object,
          createdAt: identity.createdAt * 1000
        })
      ).pipe(Effect.catchAll((error) => Effect.logError("The response could not be stored", error)))

    if (body.stream !== true) {
      const { finished, reason, text } = yield* generatedText(events)
      const object = finishedObject(identity, text, finished, reason)
      yield* save(text, object)
      return HttpServerResponse.unsafeJson(object)
    }

    const item = { item_id: identity.messageId, output_index: 0, content_index: 0 }
    const framesOf = (state: { readonly sequence: number; readonly text: string }, event: GenerationEvent) => {
      let sequence = state.sequence
      const frames: Array<string> = []
      const emit = (type: string, data: Record<string, unknown>) => frames.push(sseEvent(type, sequence++, data))
      const done = (text: string) => Effect.succeed([{ sequence, text }, frames] as const)
      switch (event._tag) {
        case "Started": {
          const response = responseObject(identity, { status: "in_progress" })
          emit("response.created", { response })
          emit("response.in_progress", { response })
          emit("response.output_item.added", { output_index: 0, item: messageItem(identity, "in_progress", []) })
          emit("response.content_part.added", { ...item, part: outputText("") })
          return done(state.text)
        }
        case "Delta":
          if (event.text !== "") emit("response.output_text.delta", { ...item, delta: event.text, logprobs: [] })
          return done(state.text + event.text)
        case "Finished":
          return Effect.flatMap(outcomeOf(event), (outcome) => {
            if (outcome._tag === "Failed") {
              emit("response.failed", { response: failedObject(identity, outcome.failure) })
              return done(state.text)
            }
            const object = finishedObject(identity, state.text, event, outcome.reason)
            const part = outputText(state.text)
            emit("response.output_text.done", { ...item, text: state.text, logprobs: [] })
            emit("response.content_part.done", { ...item, part })
            emit("response.output_item.done", { output_index: 0, item: object.output[0] })
            emit(outcome.reason === "stop" ? "response.completed" : "response.incomplete", { response: object })
            return Effect.zipRight(save(state.text, object), done(state.text))
          })
      }
    }
    const started = yield* startedEvents(events, (event) => event)
    const frames = started.pipe(Stream.mapAccumEffect({ sequence: 0, text: "" }, framesOf), Stream.flattenIterables, Stream.encodeText)
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
