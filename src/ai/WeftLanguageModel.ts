/**
 * Weft as an `@effect/ai` provider: `LanguageModel` on a model of the in-process `ModelRegistry`, no HTTP in between.
 * Requests go through the same mapping as `/v1/chat/completions` (validation, chat template, grammars, tool calls).
 */
import { AiError, LanguageModel, Tool } from "@effect/ai"
import type { Prompt, Response } from "@effect/ai"
import { Config as EffectConfig, Context, DateTime, Effect, Layer, Stream } from "effect"
import type { ConfigError } from "effect"
import { randomUUID } from "node:crypto"
import type { ChatMessageInput, ChatCompletionRequest, ToolChoice, ToolInput } from "../http/OpenAiRequests.js"
import { ChatCompletionRequest as ChatCompletionRequestSchema } from "../http/OpenAiRequests.js"
import { chatPrompt, decodeBody, planOf } from "../http/OpenAiMapping.js"
import { generatedText, newCallId, outcomeOf, splitToolCalls } from "../http/GenerationResponse.js"
import type { Finished } from "../http/GenerationResponse.js"
import { validatedOutput } from "../http/StructuredOutput.js"
import { ToolCallParser } from "../engine/ToolCallParser.js"
import type { Engine } from "../host/LocalEngine.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { aiErrorOf, engineFor } from "./WeftAiErrors.js"

/**
 * Generation settings, named as on `/v1/chat/completions` (so Weft's extensions such as `top_k`, `priority` and the
 * per-request timeouts are here too). Each is validated as the HTTP route validates it.
 */
export type ConfigShape = Partial<
  Pick<
    ChatCompletionRequest,
    | "max_tokens"
    | "temperature"
    | "top_p"
    | "top_k"
    | "min_p"
    | "seed"
    | "stop"
    | "presence_penalty"
    | "frequency_penalty"
    | "repeat_penalty"
    | "ignore_eos"
    | "priority"
    | "cache_salt"
    | "parallel_tool_calls"
    | "timeout_queue_ms"
    | "timeout_first_token_ms"
    | "timeout_total_ms"
  >
>

/** Settings that apply to the requests of an effect (see `withConfigOverride`), over the layer's own. */
export class Config extends Context.Tag("weft/ai/WeftLanguageModel/Config")<Config, ConfigShape>() {}

/** Runs `effect` with `overrides` applied over the generation settings already in place. */
export const withConfigOverride = (overrides: ConfigShape) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.serviceOption(Config), (current) =>
    Effect.provideService(effect, Config, { ...(current._tag === "Some" ? current.value : {}), ...overrides }))

/** What the layer is built from: the served model's id and default generation settings. */
export interface Options {
  readonly model: string
  readonly config?: ConfigShape | undefined
}

const module = "WeftLanguageModel"

const malformedInput = (method: string, description: string) => new AiError.MalformedInput({ module, method, description })

const jsonText = (value: unknown) => (typeof value === "string" ? value : JSON.stringify(value))

/** `@effect/ai`'s prompt as OpenAI chat messages: text only, an assistant's tool calls and tool results kept. */
const messagesOf = (prompt: Prompt.Prompt): Effect.Effect<ReadonlyArray<ChatMessageInput>, AiError.MalformedInput> =>
  Effect.forEach(prompt.content, (message): Effect.Effect<ReadonlyArray<ChatMessageInput>, AiError.MalformedInput> => {
    switch (message.role) {
      case "system":
        return Effect.succeed([{ role: "system", content: message.content }])
      case "user": {
        const file = message.content.find((part) => part.type === "file")
        if (file !== undefined) {
          return Effect.fail(malformedInput("prepareMessages", `Weft's models read text only; a file part (${file.mediaType}) cannot be sent`))
        }
        return Effect.succeed([{ role: "user", content: message.content.map((part) => (part.type === "text" ? part.text : "")).join("") }])
      }
      case "assistant": {
        const text = message.content.map((part) => (part.type === "text" ? part.text : "")).join("")
        const calls = message.content.flatMap((part) =>
          part.type === "tool-call" && !part.providerExecuted
            ? [{ id: part.id, type: "function" as const, function: { name: part.name, arguments: JSON.stringify(part.params) } }]
            : []
        )
        return Effect.succeed([{ role: "assistant", content: text, ...(calls.length > 0 ? { tool_calls: calls } : {}) }])
      }
      case "tool":
        return Effect.succeed(message.content.map((part): ChatMessageInput => ({ role: "tool", tool_call_id: part.id, content: jsonText(part.result) })))
    }
  }).pipe(Effect.map((groups) => groups.flat()))

/** The toolkit's tools as OpenAI function tools; provider-defined tools (another vendor's) cannot run here. */
const toolsOf = (tools: ReadonlyArray<Tool.Any>): Effect.Effect<ReadonlyArray<ToolInput>, AiError.MalformedInput> =>
  Effect.forEach(tools, (tool) =>
    Tool.isUserDefined(tool)
      ? Effect.succeed<ToolInput>({
        type: "function",
        function: {
          name: tool.name,
          description: tool.description ?? Tool.getDescriptionFromSchemaAst(tool.parametersSchema.ast),
          parameters: Tool.getJsonSchemaFromSchemaAst(tool.parametersSchema.ast)
        }
      })
      : Effect.fail(malformedInput("prepareTools", `The provider-defined tool '${tool.name}' cannot run on Weft; use a user-defined tool`)))

/** `@effect/ai`'s tool choice in OpenAI's terms; a `oneOf` subset has already narrowed the tools. */
const toolChoiceOf = (choice: LanguageModel.ToolChoice<string>): ToolChoice => {
  if (typeof choice === "string") return choice
  if ("tool" in choice) return { type: "function", function: { name: choice.tool } }
  return choice.mode === "required" ? "required" : "auto"
}

/** The chat request `options` amount to, checked as the HTTP route checks a body. */
const requestOf = (model: string, options: LanguageModel.ProviderOptions, config: ConfigShape) =>
  Effect.gen(function*() {
    const messages = yield* messagesOf(options.prompt)
    const tools = options.tools.length === 0 ? undefined : yield* toolsOf(options.tools)
    const format = options.responseFormat
    const body = {
      ...config,
      model,
      messages,
      ...(tools === undefined ? {} : { tools, tool_choice: toolChoiceOf(options.toolChoice) }),
      ...(format.type === "json"
        ? {
          response_format: {
            type: "json_schema",
            json_schema: { name: format.objectName, schema: Tool.getJsonSchemaFromSchemaAst(format.schema.ast), strict: true }
          }
        }
        : {})
    }
    return yield* decodeBody(ChatCompletionRequestSchema, body)
  })

const usageOf = (finished: Finished): Response.FinishPartEncoded["usage"] => ({
  inputTokens: finished.usage.promptTokens,
  outputTokens: finished.usage.completionTokens,
  totalTokens: finished.usage.promptTokens + finished.usage.completionTokens,
  cachedInputTokens: finished.usage.cachedTokens
})

const finishReasonOf = (reason: "stop" | "length", toolCalls: number): Response.FinishReason =>
  toolCalls > 0 && reason === "stop" ? "tool-calls" : reason

const parsedParams = (method: string, name: string, text: string) =>
  Effect.try({
    try: (): unknown => JSON.parse(text === "" ? "{}" : text),
    catch: (cause) => new AiError.MalformedOutput({ module, method, description: `The arguments of the call to '${name}' are not JSON: ${text}`, cause })
  })

const metadataPart = (id: string, modelId: string): Effect.Effect<Response.ResponseMetadataPartEncoded> =>
  Effect.map(DateTime.now, (now) => ({ type: "response-metadata", id, modelId, timestamp: DateTime.formatIso(now) }))

/** Builds Weft's `LanguageModel` for the registered model `options.model`. */
export const make = (options: Options): Effect.Effect<LanguageModel.Service, never, ModelRegistry> =>
  Effect.gen(function*() {
    const registry = yield* ModelRegistry

    /** Admits the generation `providerOptions` ask for; nothing runs until its stream is pulled. */
    const start = (method: string, providerOptions: LanguageModel.ProviderOptions) =>
      Effect.gen(function*() {
        const override = yield* Effect.serviceOption(Config)
        const config = { ...options.config, ...(override._tag === "Some" ? override.value : {}) }
        const { backend, scheduler }: Engine = yield* engineFor(registry, options.model)
        const body = yield* requestOf(options.model, providerOptions, config)
        const plan = yield* planOf(body, { maxTokens: undefined }, backend)
        const prompt = yield* chatPrompt(backend, body)
        const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`
        const events = validatedOutput(plan.request.sampling.grammar, scheduler.submit({ ...plan.request, id, prompt }))
        return { id, modelId: backend.info.id, events, toolSyntax: plan.toolSyntax }
      }).pipe(Effect.mapError((error) => aiErrorOf(module, method, error)))

    const generateText = (providerOptions: LanguageModel.ProviderOptions) =>
      Effect.gen(function*() {
        const run = yield* start("generateText", providerOptions)
        const { finished, reason, text: output } = yield* generatedText(run.events).pipe(
          Effect.mapError((error) => aiErrorOf(module, "generateText", error))
        )
        const { calls, text } = run.toolSyntax === undefined ? { calls: [], text: output } : splitToolCalls(run.toolSyntax, output)
        const parts: Array<Response.PartEncoded> = [yield* metadataPart(run.id, run.modelId)]
        if (text !== "") parts.push({ type: "text", text })
        for (const call of calls) {
          parts.push({ type: "tool-call", id: call.id, name: call.name, params: yield* parsedParams("generateText", call.name, call.arguments) })
        }
        parts.push({ type: "finish", reason: finishReasonOf(reason, calls.length), usage: usageOf(finished) })
        return parts
      })

    const streamText = (providerOptions: LanguageModel.ProviderOptions): Stream.Stream<Response.StreamPartEncoded, AiError.AiError> =>
      Stream.unwrap(Effect.map(start("streamText", providerOptions), (run) => {
        const textId = `${run.id}-text`
        const parser = run.toolSyntax === undefined ? undefined : new ToolCallParser(run.toolSyntax)
        // Written only by this stream's fiber, one event at a time: the calls started so far, and whether text is open.
        const calls: Array<{ readonly id: string; readonly name: string; args: string }> = []
        let textOpen = false

        const textDelta = (delta: string): ReadonlyArray<Response.StreamPartEncoded> => {
          if (delta === "") return []
          const open: ReadonlyArray<Response.StreamPartEncoded> = textOpen ? [] : [{ type: "text-start", id: textId }]
          textOpen = true
          return [...open, { type: "text-delta", id: textId, delta }]
        }
        const parsed = (text: string): ReadonlyArray<Response.StreamPartEncoded> => {
          if (parser === undefined) return textDelta(text)
          return (text === "" ? [] : parser.push(text)).flatMap((event): ReadonlyArray<Response.StreamPartEncoded> => {
            if (event._tag === "Text") return textDelta(event.text)
            if (event._tag === "CallStarted") {
              const call = { id: newCallId(), name: event.name, args: "" }
              calls.push(call)
              return [{ type: "tool-params-start", id: call.id, name: call.name }]
            }
            const call = calls[event.index]!
            call.args += event.text
            return [{ type: "tool-params-delta", id: call.id, delta: event.text }]
          })
        }
        const finish = (event: Finished) =>
          Effect.gen(function*() {
            const outcome = yield* outcomeOf(event)
            if (outcome._tag === "Failed") return yield* Effect.fail(aiErrorOf(module, "streamText", outcome.failure))
            const rest = parser === undefined ? [] : parser.finish().flatMap((last) => (last._tag === "Text" ? textDelta(last.text) : []))
            const parts: Array<Response.StreamPartEncoded> = [...rest]
            if (textOpen) parts.push({ type: "text-end", id: textId })
            for (const call of calls) {
              parts.push({ type: "tool-params-end", id: call.id })
              parts.push({ type: "tool-call", id: call.id, name: call.name, params: yield* parsedParams("streamText", call.name, call.args) })
            }
            parts.push({ type: "finish", reason: finishReasonOf(outcome.reason, calls.length), usage: usageOf(event) })
            return parts
          })

        return run.events.pipe(
          Stream.mapError((error) => aiErrorOf(module, "streamText", error)),
          Stream.mapEffect((event): Effect.Effect<ReadonlyArray<Response.StreamPartEncoded>, AiError.AiError> => {
            switch (event._tag) {
              case "Started":
                return Effect.map(metadataPart(run.id, run.modelId), (part) => [part])
              case "Delta":
                return Effect.succeed(parsed(event.text))
              case "Finished":
                return finish(event)
            }
          }),
          Stream.flattenIterables
        )
      }))

    return yield* LanguageModel.make({ generateText, streamText })
  })

/** `LanguageModel` on the registered model `options.model`. */
export const layer = (options: Options): Layer.Layer<LanguageModel.LanguageModel, never, ModelRegistry> =>
  Layer.effect(LanguageModel.LanguageModel, make(options))

/** `layer`, its options read from Effect's `Config` (the environment by default). */
export const layerConfig = (
  options: EffectConfig.Config.Wrap<Options>
): Layer.Layer<LanguageModel.LanguageModel, ConfigError.ConfigError, ModelRegistry> =>
  Layer.unwrapEffect(Effect.map(EffectConfig.unwrap(options), layer))
