import { AiError, LanguageModel, Prompt, Tool, Toolkit } from "@effect/ai"
import type { Response } from "@effect/ai"
import { describe, expect, layer } from "@effect/vitest"
import { Chunk, Config, ConfigProvider, Deferred, Effect, Fiber, Layer, Logger, LogLevel, Schema, Stream } from "effect"
import * as WeftLanguageModel from "../../src/ai/WeftLanguageModel.js"
import { InvalidParam } from "../../src/http/HttpErrors.js"
import { ModelNotFound } from "../../src/host/HostErrors.js"
import { observedEngineLayer, schedulerLayer } from "../../src/host/LocalEngine.js"
import { ModelRegistry } from "../../src/host/ModelRegistry.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

const registry = ModelRegistry.layer([{ engine: observedEngineLayer(schedulerLayer(tinyBackend({ parallel: 2, contextSize: 2048 }))) }])

const models = WeftLanguageModel.layer({ model: tinyModelId, config: { seed: 7, max_tokens: 24 } }).pipe(
  Layer.provideMerge(registry),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Error))
)

const GetWeather = Tool.make("GetWeather", {
  description: "The weather forecast of a city",
  parameters: { city: Schema.Literal("Paris", "Oslo", "Lima"), days: Schema.Literal(1, 2, 3) },
  success: Schema.Struct({ forecast: Schema.String })
})
const WeatherTools = Toolkit.make(GetWeather)
const weatherHandlers = WeatherTools.toLayer({ GetWeather: ({ city, days }) => Effect.succeed({ forecast: `${city}: sunny for ${days} days` }) })

/** The slots of the one registered engine, and how many requests it is running. */
const engineLoad = Effect.gen(function*() {
  const [engine] = yield* Effect.flatMap(ModelRegistry, (registry) => registry.ready)
  const stats = yield* engine!.scheduler.stats
  return { free: stats.slots.free, total: stats.slots.total, running: stats.running }
})

const textOf = (parts: ReadonlyArray<Response.StreamPart<{}>>) => parts.map((part) => (part.type === "text-delta" ? part.delta : "")).join("")

describe("WeftLanguageModel on the tiny model", () => {
  layer(models, { timeout: 120_000 })((it) => {
    it.effect("generateText answers with text, the length finish reason and the engine's usage", () =>
      Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({ prompt: "Say something." })
        expect(response.text.length).toBeGreaterThan(0)
        expect(response.finishReason).toBe("length")
        expect(response.usage.outputTokens).toBe(24)
        expect(response.usage.inputTokens).toBeGreaterThan(3)
        expect(response.usage.totalTokens).toBe(response.usage.inputTokens! + 24)
        const metadata = response.content.find((part) => part.type === "response-metadata")
        expect(metadata?.modelId._tag === "Some" && metadata.modelId.value).toBe(tinyModelId)
      }))

    it.effect("streamText streams the same text generateText gives for the same seed, framed by start, end and finish", () =>
      Effect.gen(function*() {
        const whole = yield* LanguageModel.generateText({ prompt: "Count with me." })
        const parts = Chunk.toReadonlyArray(yield* Stream.runCollect(LanguageModel.streamText({ prompt: "Count with me." })))
        const types = parts.map((part) => part.type)
        expect(types[0]).toBe("response-metadata")
        expect(types[1]).toBe("text-start")
        expect(types.slice(-2)).toEqual(["text-end", "finish"])
        expect(types.slice(2, -2).every((type) => type === "text-delta")).toBe(true)
        expect(textOf(parts)).toBe(whole.text)
        const finish = parts.at(-1)
        expect(finish?.type === "finish" && finish.usage.outputTokens).toBe(24)
      }))

    it.effect("generateObject turns the schema into a grammar: the output decodes with it", () =>
      Effect.gen(function*() {
        const Forecast = Schema.Struct({
          city: Schema.Literal("Paris", "Oslo", "Lima"),
          sunny: Schema.Boolean,
          days: Schema.Array(Schema.Literal("mon", "tue", "wed")).pipe(Schema.maxItems(3))
        })
        for (const seed of [1, 2, 3]) {
          const response = yield* LanguageModel.generateObject({ prompt: "The forecast, please.", schema: Forecast }).pipe(
            WeftLanguageModel.withConfigOverride({ seed, max_tokens: 200 })
          )
          expect(response.finishReason).toBe("stop")
          expect(Schema.is(Forecast)(response.value)).toBe(true)
          expect(JSON.parse(response.text)).toEqual(response.value)
        }
      }))

    it.effect("a toolkit's tool is called with arguments of its schema, its result is returned, and the result goes back in", () =>
      Effect.gen(function*() {
        const prompt = Prompt.make("What is the weather in Lima?")
        const response = yield* LanguageModel.generateText({ prompt, toolkit: WeatherTools, toolChoice: { tool: "GetWeather" } }).pipe(
          WeftLanguageModel.withConfigOverride({ max_tokens: 200 })
        )
        expect(response.finishReason).toBe("tool-calls")
        expect(response.toolCalls.length).toBeGreaterThan(0)
        const call = response.toolCalls[0]!
        expect(call.name).toBe("GetWeather")
        expect(call.id).toMatch(/^call_/)
        expect(["Paris", "Oslo", "Lima"]).toContain(call.params.city)
        const result = response.toolResults.find((part) => part.id === call.id)
        expect(result?.result).toEqual({ forecast: `${call.params.city}: sunny for ${call.params.days} days` })

        // The tool call and its result become part of the next turn's prompt, which the model then answers in text.
        const next = Prompt.merge(prompt, Prompt.fromResponseParts(response.content))
        const answer = yield* LanguageModel.generateText({ prompt: next, toolkit: WeatherTools, toolChoice: "none" })
        expect(answer.toolCalls).toEqual([])
        expect(answer.text.length).toBeGreaterThan(0)
        const without = yield* LanguageModel.generateText({ prompt, toolkit: WeatherTools, toolChoice: "none" })
        expect(answer.usage.inputTokens).toBeGreaterThan(without.usage.inputTokens! + 10)
      }).pipe(Effect.provide(weatherHandlers)))

    it.effect("streamText with a toolkit streams the call's parameters, the call, and its result", () =>
      Effect.gen(function*() {
        const parts = Chunk.toReadonlyArray(
          yield* Stream.runCollect(LanguageModel.streamText({ prompt: "Weather in Oslo?", toolkit: WeatherTools, toolChoice: "required" }))
        ).filter((part) => part.type !== "tool-params-delta")
        const types = parts.map((part) => part.type)
        expect(types.slice(0, 2)).toEqual(["response-metadata", "tool-params-start"])
        expect(types.indexOf("tool-params-end")).toBeLessThan(types.indexOf("tool-call"))
        const call = parts.find((part) => part.type === "tool-call")
        const result = parts.find((part) => part.type === "tool-result")
        expect(call?.type === "tool-call" && result?.type === "tool-result" && result.id === call.id).toBe(true)
        const finish = parts.find((part) => part.type === "finish")
        expect(finish?.type === "finish" && finish.reason).toBe("tool-calls")
      }).pipe(Effect.provide(weatherHandlers), WeftLanguageModel.withConfigOverride({ max_tokens: 200 })))

    it.effect("interrupting the caller mid-stream frees the slot", () =>
      Effect.gen(function*() {
        const twoDeltas = yield* Deferred.make<void>()
        let deltas = 0
        const fiber = yield* LanguageModel.streamText({ prompt: "Go on forever." }).pipe(
          Stream.runForEach((part) => Effect.when(Deferred.succeed(twoDeltas, undefined), () => part.type === "text-delta" && ++deltas === 2)),
          WeftLanguageModel.withConfigOverride({ ignore_eos: true, max_tokens: 1500 }),
          Effect.fork
        )
        yield* Deferred.await(twoDeltas)
        const during = yield* engineLoad
        expect(during.running).toBe(1)
        expect(during.free).toBe(during.total - 1)
        yield* Fiber.interrupt(fiber)
        const after = yield* engineLoad
        expect(after).toEqual({ free: after.total, total: after.total, running: 0 })
      }))

    it.effect("layerConfig reads the model and its settings from Effect's Config", () =>
      Effect.gen(function*() {
        const configured = WeftLanguageModel.layerConfig({
          model: Config.string("WEFT_MODEL"),
          config: { max_tokens: Config.integer("WEFT_MAX_TOKENS") }
        })
        const response = yield* LanguageModel.generateText({ prompt: "Hi" }).pipe(
          Effect.provide(configured),
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["WEFT_MODEL", tinyModelId], ["WEFT_MAX_TOKENS", "3"]])))
        )
        expect(response.usage.outputTokens).toBe(3)
      }))

    it.effect("errors are AiErrors that keep their cause: a bad setting is MalformedInput, an unknown model UnknownError", () =>
      Effect.gen(function*() {
        const invalid = yield* Effect.flip(
          LanguageModel.generateText({ prompt: "Hi" }).pipe(WeftLanguageModel.withConfigOverride({ temperature: 5 }))
        )
        expect(invalid).toBeInstanceOf(AiError.MalformedInput)
        expect(invalid.cause).toBeInstanceOf(InvalidParam)
        expect((invalid.cause as InvalidParam).param).toBe("temperature")

        const missing = yield* Effect.flip(
          Effect.flatMap(WeftLanguageModel.make({ model: "no-such-model" }), (model) => model.generateText({ prompt: "Hi" }))
        )
        expect(missing).toBeInstanceOf(AiError.UnknownError)
        expect(missing.cause).toBeInstanceOf(ModelNotFound)

        // A bound a grammar cannot enforce is refused before admission, naming the keyword, rather than ignored.
        const bounded = yield* Effect.flip(LanguageModel.generateObject({
          prompt: "An age",
          schema: Schema.Struct({ age: Schema.Int.pipe(Schema.between(0, 120)) })
        }))
        expect(bounded).toBeInstanceOf(AiError.MalformedInput)
        expect((bounded.cause as InvalidParam).param).toBe("response_format.json_schema.schema.properties.age.minimum")

        const streamed = yield* Effect.flip(Stream.runDrain(LanguageModel.streamText({ prompt: "Hi" })).pipe(
          WeftLanguageModel.withConfigOverride({ top_k: -1 })
        ))
        expect(streamed).toBeInstanceOf(AiError.MalformedInput)
      }))
  })
})
