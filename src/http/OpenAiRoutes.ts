import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Clock, Effect } from "effect"
import type { Schema } from "effect"
import { randomUUID } from "node:crypto"
import type { BackendShape, ChatTemplateFailed } from "../engine/Backend.js"
import { ModelNotFound } from "./HttpErrors.js"
import type { InvalidParam } from "./HttpErrors.js"
import { jsonResponse, sseResponse } from "./GenerationResponse.js"
import { readJsonBody } from "./JsonBody.js"
import { ModelHost } from "./ModelHost.js"
import { chatPrompt, checkModel, completionPrompt, decodeBody, planOf } from "./OpenAiMapping.js"
import { ChatCompletionRequest, CompletionRequest } from "./OpenAiRequests.js"
import type { SharedRequest } from "./OpenAiRequests.js"
import type { CompletionKind } from "./OpenAiResponses.js"

export interface OpenAiRoutesOptions {
  readonly maxBodyBytes: number
}

/** OpenAI's default `max_tokens` for legacy completions; chat completions run to end-of-generation by default. */
const legacyCompletionMaxTokens = 16

const newId = (kind: CompletionKind) => `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID().replaceAll("-", "")}`

const generationRoute = <A extends SharedRequest, I>(
  options: OpenAiRoutesOptions,
  kind: CompletionKind,
  schema: Schema.Schema<A, I>,
  promptOf: (backend: BackendShape, body: A) => Effect.Effect<ReadonlyArray<number>, InvalidParam | ChatTemplateFailed>
) =>
  Effect.gen(function*() {
    const body = yield* decodeBody(schema, yield* readJsonBody(options.maxBodyBytes))
    const { backend, scheduler } = yield* Effect.flatMap(ModelHost, (host) => host.engine)
    yield* checkModel(body.model, backend.info)
    const plan = yield* planOf(body, { maxTokens: kind === "text" ? legacyCompletionMaxTokens : undefined })
    const prompt = yield* promptOf(backend, body)
    const id = newId(kind)
    const meta = { kind, id, created: Math.floor((yield* Clock.currentTimeMillis) / 1000), model: backend.info.id }
    const run = { meta, events: scheduler.submit({ id, prompt, ...plan.request }) }
    return plan.stream ? yield* sseResponse(run, plan.includeUsage) : yield* jsonResponse(run)
  }).pipe(Effect.withSpan(kind === "chat" ? "http.chatCompletions" : "http.completions"))

const safeDecode = (text: string) => {
  try {
    return decodeURIComponent(text)
  } catch {
    return text
  }
}

const modelObject = (id: string, created: number) => ({ id, object: "model", created, owned_by: "weft" })

/** `/v1/chat/completions`, `/v1/completions`, `/v1/models` and `/v1/models/{id}`. */
export const openAiRoutes = (options: OpenAiRoutesOptions) => {
  const startedAt = Math.floor(Date.now() / 1000)
  return HttpRouter.empty.pipe(
    HttpRouter.post(
      "/v1/chat/completions",
      generationRoute(options, "chat", ChatCompletionRequest, (backend, body) => chatPrompt(backend, body.messages))
    ),
    HttpRouter.post(
      "/v1/completions",
      generationRoute(options, "text", CompletionRequest, (backend, body) => completionPrompt(backend, body.prompt))
    ),
    HttpRouter.get(
      "/v1/models",
      Effect.gen(function*() {
        const { backend } = yield* Effect.flatMap(ModelHost, (host) => host.engine)
        return HttpServerResponse.unsafeJson({ object: "list", data: [modelObject(backend.info.id, startedAt)] })
      })
    ),
    HttpRouter.get(
      // A wildcard, since model ids may contain slashes (`org/name`).
      "/v1/models/*",
      Effect.gen(function*() {
        const params = yield* HttpRouter.params
        const { backend } = yield* Effect.flatMap(ModelHost, (host) => host.engine)
        const requested = safeDecode(params["*"] ?? "")
        if (requested !== backend.info.id) return yield* new ModelNotFound({ model: requested })
        return HttpServerResponse.unsafeJson(modelObject(backend.info.id, startedAt))
      })
    )
  )
}
