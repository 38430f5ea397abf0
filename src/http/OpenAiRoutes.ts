import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Chunk, Clock, Effect, Option, Ref, Stream } from "effect"
import type { Schema, Scope } from "effect"
import { randomUUID } from "node:crypto"
import type { BackendShape } from "../engine/Backend.js"
import type { GenerationEvent } from "../scheduler/GenerationRequest.js"
import { PromptShare } from "../scheduler/PromptShare.js"
import { openedBy } from "../scheduler/RequestScheduler.js"
import { currentPrincipal } from "../identity/currentPrincipal.js"
import { RateLimiter } from "../identity/RateLimiter.js"
import { SessionStore } from "../sessions/SessionStore.js"
import { prefixCacheKey } from "../identity/Tenancy.js"
import { ModelLoading } from "../host/HostErrors.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { AdapterContexts } from "../host/AdapterContexts.js"
import { InvalidParam, SessionNotFound } from "./HttpErrors.js"
import type { ApiFailure } from "./OpenAiErrors.js"
import { jsonResponse, sseResponse } from "./GenerationResponse.js"
import type { ChoiceEvent, EachChunk } from "./GenerationResponse.js"
import { readJsonBody } from "./JsonBody.js"
import { resolveModel } from "./ModelRoute.js"
import type { Engine } from "../host/LocalEngine.js"
import { routedGeneration } from "../upstream/RoutedGeneration.js"
import { ModelRouter } from "../upstream/ModelRouter.js"
import { safeIdDescription, safeIdPattern } from "./SafeId.js"
import { sessionOwnerOf } from "./SessionRoutes.js"
import { validatedOutput } from "./StructuredOutput.js"
import { chatMessagesOf, chatPrompt, completionPrompts, decodeRequest, planOf } from "./OpenAiMapping.js"
import { ChatCompletionRequest, CompletionRequest } from "./OpenAiRequests.js"
import type { SharedRequest } from "./OpenAiRequests.js"
import type { CompletionKind } from "./OpenAiResponses.js"
import { RequestUsage } from "./RequestUsage.js"
import { Plugins } from "../plugins/Plugins.js"
import { clusterForward } from "../cluster/ClusterGate.js"
import type { TokenUsage } from "./RequestUsage.js"

export interface OpenAiRoutesOptions {
  readonly maxBodyBytes: number
}

/** OpenAI's default `max_tokens` for legacy completions; chat completions run to end-of-generation by default. */
const legacyCompletionMaxTokens = 16

const newId = (kind: CompletionKind) => `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID().replaceAll("-", "")}`

/**
 * Builds each choice's event stream once the prompts are known, in `index` order: `submit` runs choice `index`
 * (its `choice` among the `n` of its prompt) on `prompt`. Sessions wrap it to load and save the conversation.
 */
type RunOf<A> = (
  backend: BackendShape,
  body: A,
  n: number,
  submit: (prompt: ReadonlyArray<number>, index: number, choice: number, share?: PromptShare, sessionId?: string) => Stream.Stream<GenerationEvent, ApiFailure>
) => Effect.Effect<{ readonly choices: ReadonlyArray<Stream.Stream<GenerationEvent, ApiFailure>>; readonly headers?: Record<string, string> }, ApiFailure, SessionStore | HttpServerRequest.HttpServerRequest>

/** The `n` choices of each prompt, numbered prompt by prompt; with `n` > 1 they share their prompt's evaluation. */
const fanOut = (
  prompts: ReadonlyArray<ReadonlyArray<number>>,
  n: number,
  submit: Parameters<RunOf<unknown>>[3]
) =>
  Effect.map(
    Effect.forEach(prompts, () => (n > 1 ? Effect.map(PromptShare.make, (share) => share as PromptShare | undefined) : Effect.succeed(undefined))),
    (shares) => prompts.flatMap((prompt, at) => Array.from({ length: n }, (_, choice) => submit(prompt, at * n + choice, choice, shares[at])))
  )

/** The choices' events merged as they come, each tagged with its choice's index. */
const mergeChoices = (choices: ReadonlyArray<Stream.Stream<GenerationEvent, ApiFailure>>): Stream.Stream<ChoiceEvent, ApiFailure> =>
  choices.length === 1
    ? Stream.map(choices[0]!, (event) => ({ index: 0, event }))
    : Stream.mergeAll(choices.map((events, index) => Stream.map(events, (event) => ({ index, event }))), { concurrency: "unbounded" })

/**
 * Runs a generation under the caller's rate limits (none when there is no principal): admits it with its prompt and
 * the completion tokens it may use reserved, holds a concurrency slot while it streams, then settles the tokens it
 * really used (those seen so far, if it ended early; none, if it never started) and notes them for the audit log.
 * Without `max_tokens`, the reservation is what the context leaves after the prompt, shrunk to fit the token limit.
 * `stream` meters a choice's event stream; `open` meters one in the current scope and gives back the pass that counts
 * each chunk of its events, for a route that reads them without a stream.
 */
const metered = (backend: BackendShape, maxTokens: number | undefined) =>
  Effect.gen(function*() {
    const principal = yield* currentPrincipal
    const limiter = yield* RateLimiter
    const usage = yield* RequestUsage
    const counter = () => {
      let used: TokenUsage | undefined
      const count = (chunk: Iterable<GenerationEvent>) => {
        for (const event of chunk) {
          if (event._tag === "Started") used = { promptTokens: event.promptTokens, completionTokens: 0 }
          else if (event._tag === "Delta" && used !== undefined) used = { ...used, completionTokens: used.completionTokens + event.tokens }
          else if (event._tag === "Finished") used = event.usage
        }
      }
      // Several choices each add theirs; prompt tokens of a prompt's repeated choices count each time here.
      const noteUsage = Ref.update(usage, (before) =>
        before === undefined || used === undefined
          ? (used ?? before)
          : { promptTokens: before.promptTokens + used.promptTokens, completionTokens: before.completionTokens + used.completionTokens })
      return { count, noteUsage, tokensUsed: () => (used === undefined ? 0 : used.promptTokens + used.completionTokens) }
    }
    const open = (prompt: ReadonlyArray<number>) =>
      Effect.gen(function*() {
        const { count, noteUsage, tokensUsed } = counter()
        if (Option.isNone(principal)) {
          yield* Effect.addFinalizer(() => noteUsage)
          return count
        }
        const room = Math.max(0, backend.info.contextSize - prompt.length)
        const reservation = { promptTokens: prompt.length, reservedCompletionTokens: Math.min(maxTokens ?? room, room), estimated: maxTokens === undefined }
        const ticket = yield* limiter.acquire(principal.value, reservation)
        // Added after the ticket, so it runs before the ticket's slot is released.
        yield* Effect.addFinalizer(() => Effect.zipRight(noteUsage, Effect.suspend(() => ticket.settle(tokensUsed()))))
        return count
      })
    const stream = (prompt: ReadonlyArray<number>, events: Stream.Stream<GenerationEvent, ApiFailure>): Stream.Stream<GenerationEvent, ApiFailure> => {
      // No caller, no limits: only the usage (for the audit log), without a scope of its own.
      if (Option.isNone(principal)) {
        const { count, noteUsage } = counter()
        // A pure pass over each chunk: an effect per event cost the token's stream a tenth of its Effect steps.
        return Stream.ensuring(Stream.mapChunks(events, (chunk) => (count(chunk), chunk)), noteUsage)
      }
      return Stream.unwrapScoped(Effect.map(open(prompt), (count) => Stream.mapChunks(events, (chunk) => (count(chunk), chunk))))
    }
    return { stream, open }
  })

/** A choice as `localGeneration` submitted it: the scheduler's events, and what the route made of them. */
interface Submitted {
  readonly prompt: ReadonlyArray<number>
  readonly generated: Stream.Stream<GenerationEvent, ApiFailure>
  readonly events: Stream.Stream<GenerationEvent, ApiFailure>
  /** Nothing between the two but the meter: no output check, no text plugin. */
  readonly plain: boolean
}

/**
 * A single choice's events read from the scheduler's mailbox in the reader's scope, metered as its stream would be,
 * when nothing else stands between them (no output check, no plugin, no server-kept session); none otherwise. The
 * stream's stages and executor cost every token about 20 Effect steps, and every request about a thousand.
 */
const directChunks = (
  choices: ReadonlyArray<Stream.Stream<GenerationEvent, ApiFailure>>,
  submitted: ReadonlyArray<Submitted>,
  meter: (prompt: ReadonlyArray<number>) => Effect.Effect<(chunk: Iterable<GenerationEvent>) => void, ApiFailure, Scope.Scope>
): EachChunk<ChoiceEvent> | undefined => {
  const only = submitted[0]
  if (choices.length !== 1 || submitted.length !== 1 || only === undefined || !only.plain || choices[0] !== only.events) return undefined
  const opened = openedBy(only.generated)
  if (Option.isNone(opened)) return undefined
  return (onChunk) =>
    Effect.scoped(Effect.gen(function*() {
      const count = yield* meter(only.prompt)
      const mailbox = yield* opened.value
      while (true) {
        const [events, done] = yield* mailbox.takeAll
        count(events)
        yield* onChunk(Chunk.map(events, (event) => ({ index: 0, event })))
        if (done) return
      }
    }))
}

const generationRoute = <A extends SharedRequest, I>(
  options: OpenAiRoutesOptions,
  kind: CompletionKind,
  schema: Schema.Schema<A, I>,
  runOf: RunOf<A>
) =>
  Effect.gen(function*() {
    const plugins = yield* Plugins
    const parsed = yield* readJsonBody(options.maxBodyBytes)
    // In a cluster (src/cluster) the session's owner, or a less busy replica, may serve it instead.
    const forwarded = yield* clusterForward(parsed)
    if (Option.isSome(forwarded)) return forwarded.value
    const raw = yield* plugins.beforeRequest(kind === "chat" ? "chat" : "completions", parsed)
    const body = yield* decodeRequest(kind === "chat" ? "chat" : "completions", schema, raw)
    // Upstream routing (src/upstream): a routed model's request goes to the deployment its router picks.
    const local = (engine: Engine, answeredAs: string | undefined) => localGeneration(kind, body, runOf, engine, answeredAs)
    const routed = yield* routedGeneration({ kind, body, raw }, local)
    if (Option.isSome(routed)) return routed.value
    return yield* local(yield* resolveModel(body.model), undefined)
  }).pipe(Effect.withSpan(kind === "chat" ? "http.chatCompletions" : "http.completions"))

/** A chat or completions request served by one local engine, answering as `answeredAs` (default its own id). */
const localGeneration = <A extends SharedRequest>(
  kind: CompletionKind,
  body: A,
  runOf: RunOf<A>,
  { backend, scheduler }: Engine,
  answeredAs: string | undefined
) =>
  Effect.gen(function*() {
    const plugins = yield* Plugins
    const plan = yield* planOf(body, { maxTokens: kind === "text" ? legacyCompletionMaxTokens : undefined }, backend)
    const id = newId(kind)
    const meta = { kind, id, created: Math.floor((yield* Clock.currentTimeMillis) / 1000), model: answeredAs ?? backend.info.id }
    const principal = yield* currentPrincipal
    const request = {
      ...plan.request,
      cacheKey: yield* prefixCacheKey(body.cache_salt),
      priority: plan.request.priority ?? Option.getOrUndefined(principal)?.defaultPriority
    }
    const meter = yield* metered(backend, request.maxTokens)
    const seed = request.sampling.seed
    // Each choice as submitted, to read a single plain one without a stream (`directChunks`).
    const submitted: Array<Submitted> = []
    const { choices, headers } = yield* runOf(backend, body, plan.n, (prompt, index, choice, promptShare, sessionId) => {
      const generated = scheduler.submit({
        ...request,
        sessionId,
        // Each choice is a request of its own: its own id, and its own seed derived from the request's.
        id: index === 0 ? id : `${id}-${index}`,
        prompt,
        promptShare,
        sampling: { ...request.sampling, seed: seed === undefined ? undefined : (seed + choice) >>> 0 }
      })
      const validated = validatedOutput(request.sampling.grammar, generated)
      const counted = meter.stream(prompt, validated)
      const events = plugins.transformText(counted, { requestId: id, model: meta.model, choice: index })
      submitted.push({ prompt, generated, events, plain: validated === generated && events === counted })
      return events
    })
    const merged = mergeChoices(choices)
    const events = plugins.afterRequest(merged, { requestId: id, endpoint: kind === "chat" ? "chat" : "completions", model: meta.model, choices: choices.length })
    const run = {
      meta,
      events,
      choices: choices.length,
      choicesPerPrompt: plan.n,
      logprobs: request.sampling.logprobs !== undefined,
      // Each choice's output is parsed for tool calls on its own.
      toolSyntax: plan.toolSyntax,
      eachChunk: events === merged ? directChunks(choices, submitted, meter.open) : undefined
    }
    const response = plan.stream ? yield* sseResponse(run, plan.includeUsage) : yield* jsonResponse(run)
    return headers === undefined ? response : HttpServerResponse.setHeaders(response, headers)
  })

/** Completions: `n` choices for each of the request's prompts. */
const completionRun: RunOf<CompletionRequest> = (backend, body, n, submit) =>
  Effect.flatMap(completionPrompts(backend, body.prompt, n), (prompts) => Effect.map(fanOut(prompts, n, submit), (choices) => ({ choices })))

/**
 * A chat turn. With a session id (`session_id`, or the `X-Session-Id` header) the server keeps the conversation:
 * `messages` holds only this turn's new messages, the stored history goes before them, and the reply is saved when
 * the generation ends. Turns of one session run one at a time; its prefix stays in the KV cache between turns.
 */
const chatRun: RunOf<ChatCompletionRequest> = (backend, body, n, submit) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const sessionId = body.session_id ?? request.headers["x-session-id"]
    if (sessionId === undefined) return { choices: yield* fanOut([yield* chatPrompt(backend, body)], n, submit) }
    if (body.tools !== undefined || body.messages.some((message) => message.role === "tool" || message.tool_calls !== undefined)) {
      return yield* new InvalidParam({
        param: "tools",
        message: "Tools and tool messages are not supported in server-kept sessions; send the whole conversation instead",
        code: "unsupported_value"
      })
    }
    if (n > 1) {
      return yield* new InvalidParam({ param: "n", message: "A session turn has one reply: n must be 1 with session_id", code: "unsupported_value" })
    }
    if (!safeIdPattern.test(sessionId)) {
      return yield* new InvalidParam({ param: "session_id", message: `session_id must be ${safeIdDescription}`, code: "invalid_value" })
    }
    const store = yield* SessionStore
    const owner = yield* sessionOwnerOf(body.cache_salt)
    const newMessages = chatMessagesOf(body.messages)
    const events = Stream.unwrapScoped(
      Effect.gen(function*() {
        yield* store.lockTurn(sessionId)
        const existing = yield* store.resume(sessionId, owner).pipe(
          Effect.catchTag("SessionOwnedByAnother", () => new SessionNotFound({ sessionId }))
        )
        const history = Option.match(existing, { onNone: () => [], onSome: (session) => session.messages })
        const prompt = yield* backend.renderChat([...history, ...newMessages])
        let reply = ""
        return submit(prompt, 0, 0, undefined, sessionId).pipe(
          Stream.tap((event) => {
            if (event._tag === "Delta") reply += event.text
            if (event._tag !== "Finished" || (event.finishReason !== "stop" && event.finishReason !== "length")) return Effect.void
            return store.appendTurn(sessionId, owner, { newMessages, reply: { role: "assistant", content: reply }, usage: event.usage }).pipe(
              Effect.catchAll((error) => Effect.logError("The session turn could not be saved", error))
            )
          })
        )
      })
    )
    return { choices: [events], headers: { "x-session-id": sessionId } }
  })

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
      generationRoute(options, "chat", ChatCompletionRequest, chatRun)
    ),
    HttpRouter.post(
      "/v1/completions",
      generationRoute(options, "text", CompletionRequest, completionRun)
    ),
    HttpRouter.get(
      "/v1/models",
      Effect.gen(function*() {
        const registry = yield* ModelRegistry
        const models = yield* registry.models
        // Until a model is serving there is nothing to list yet: answer like a request for it would.
        if (models.some((model) => model.state._tag === "Loading") && !models.some((model) => model.state._tag === "Ready")) {
          return yield* new ModelLoading()
        }
        const routed = Option.match(yield* Effect.serviceOption(ModelRouter), { onNone: () => [], onSome: (router) => router.modelIds })
        const adapters = yield* AdapterContexts
        const served = models.flatMap((model) => (model.state._tag === "Ready" ? [model.state.engine.backend.info.id] : []))
        // Each model, then its adapters as `model:adapter`, then the routed models.
        const ids = yield* Effect.forEach(served, (id) => Effect.map(adapters.idsOf(id), (adapterIds) => [id, ...adapterIds]))
        const data = [...ids.flat(), ...routed].map((id) => modelObject(id, startedAt))
        return HttpServerResponse.unsafeJson({ object: "list", data })
      })
    ),
    HttpRouter.get(
      // A wildcard, since model ids may contain slashes (`org/name`).
      "/v1/models/*",
      Effect.gen(function*() {
        const params = yield* HttpRouter.params
        const id = safeDecode(params["*"] ?? "")
        if (Option.exists(yield* Effect.serviceOption(ModelRouter), (router) => router.routes(id))) return HttpServerResponse.unsafeJson(modelObject(id, startedAt))
        const { backend } = yield* resolveModel(id)
        return HttpServerResponse.unsafeJson(modelObject(backend.info.id, startedAt))
      })
    )
  )
}
