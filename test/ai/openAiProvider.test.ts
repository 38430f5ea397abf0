import { EmbeddingModel, LanguageModel, Prompt, Tool, Toolkit } from "@effect/ai"
import { OpenAiClient, OpenAiEmbeddingModel, OpenAiLanguageModel } from "@effect/ai-openai"
import { NodeHttpClient } from "@effect/platform-node"
import { Chunk, Effect, Layer, Schema, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

const GetWeather = Tool.make("GetWeather", {
  description: "The weather forecast of a city",
  parameters: { city: Schema.Literal("Paris", "Oslo", "Lima") },
  success: Schema.Struct({ forecast: Schema.String })
})
const WeatherTools = Toolkit.make(GetWeather)
const weatherHandlers = WeatherTools.toLayer({ GetWeather: ({ city }) => Effect.succeed({ forecast: `${city}: sunny` }) })

describe("@effect/ai-openai against a Weft server", () => {
  let server: TestServer
  let run: <A, E>(effect: Effect.Effect<A, E, LanguageModel.LanguageModel | EmbeddingModel.EmbeddingModel>) => Promise<A>

  beforeAll(async () => {
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 2048 }))
    const client = OpenAiClient.layer({ apiUrl: server.baseURL }).pipe(Layer.provide(NodeHttpClient.layerUndici))
    const models = Layer.mergeAll(
      OpenAiLanguageModel.layer({ model: tinyModelId, config: { max_output_tokens: 24, temperature: 0 } }),
      OpenAiEmbeddingModel.layerBatched({ model: tinyModelId })
    ).pipe(Layer.provide(client))
    run = <A, E>(effect: Effect.Effect<A, E, LanguageModel.LanguageModel | EmbeddingModel.EmbeddingModel>) =>
      Effect.runPromise(Effect.provide(effect, models))
  }, 120_000)
  afterAll(() => server?.close())

  it("generates text with its usage", async () => {
    const response = await run(LanguageModel.generateText({ prompt: "Say something." }))
    expect(response.text.length).toBeGreaterThan(0)
    expect(response.finishReason).toBe("length")
    expect(response.usage.outputTokens).toBe(24)
  })

  it("streams the same text it generates", async () => {
    const whole = await run(LanguageModel.generateText({ prompt: "Count with me." }))
    const parts = Chunk.toReadonlyArray(await run(Stream.runCollect(LanguageModel.streamText({ prompt: "Count with me." }))))
    expect(parts.map((part) => (part.type === "text-delta" ? part.delta : "")).join("")).toBe(whole.text)
    const finish = parts.find((part) => part.type === "finish")
    expect(finish?.type === "finish" && finish.usage.outputTokens).toBe(24)
  })

  it("generates an object that decodes with its schema", async () => {
    const Forecast = Schema.Struct({ city: Schema.Literal("Paris", "Oslo"), sunny: Schema.Boolean })
    const response = await run(
      LanguageModel.generateObject({ prompt: "The forecast.", schema: Forecast }).pipe(OpenAiLanguageModel.withConfigOverride({ max_output_tokens: 200 }))
    )
    expect(Schema.is(Forecast)(response.value)).toBe(true)
  })

  // OpenAiLanguageModel speaks the Responses API: its tools are function tools there, its calls `function_call` items.
  it("calls a tool and returns its result", async () => {
    const response = await run(
      LanguageModel.generateText({ prompt: "Weather in Lima?", toolkit: WeatherTools, toolChoice: "required" }).pipe(
        OpenAiLanguageModel.withConfigOverride({ max_output_tokens: 200 }),
        Effect.provide(weatherHandlers)
      )
    )
    expect(response.toolCalls.length).toBeGreaterThan(0)
    const call = response.toolCalls[0]!
    expect(response.toolResults[0]?.result).toEqual({ forecast: `${call.params.city}: sunny` })

    // The call and its result go back as `function_call` and `function_call_output` items, and the model answers.
    const prompt = Prompt.merge(Prompt.make("Weather in Lima?"), Prompt.fromResponseParts(response.content))
    const answer = await run(LanguageModel.generateText({ prompt, toolkit: WeatherTools, toolChoice: "none" }).pipe(Effect.provide(weatherHandlers)))
    expect(answer.toolCalls).toEqual([])
    expect(answer.text.length).toBeGreaterThan(0)
  })

  it("streams a tool call and its result", async () => {
    const parts = Chunk.toReadonlyArray(
      await run(
        Stream.runCollect(LanguageModel.streamText({ prompt: "Weather in Oslo?", toolkit: WeatherTools, toolChoice: "required" })).pipe(
          OpenAiLanguageModel.withConfigOverride({ max_output_tokens: 200 }),
          Effect.provide(weatherHandlers)
        )
      )
    )
    const call = parts.find((part) => part.type === "tool-call")
    const result = parts.find((part) => part.type === "tool-result")
    expect(call?.type === "tool-call" && call.name).toBe("GetWeather")
    expect(call?.type === "tool-call" && result?.type === "tool-result" && result.id === call.id).toBe(true)
    expect(result?.type === "tool-result" && result.result).toEqual({ forecast: `${call?.type === "tool-call" ? call.params.city : ""}: sunny` })
  })

  it("embeds through OpenAiEmbeddingModel", async () => {
    const vectors = await run(Effect.flatMap(EmbeddingModel.EmbeddingModel, (model) => model.embedMany(["one", "two"])))
    expect(vectors.length).toBe(2)
    expect(vectors[0]!.length).toBeGreaterThan(0)
    expect(vectors[0]).not.toEqual(vectors[1])
  })
})
