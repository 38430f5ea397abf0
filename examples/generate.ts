// Weft as an Effect library: @effect/ai's LanguageModel on a local model, in process, no HTTP.
// Run: npm run example:generate   (the demo model is generated into .weft/ on first use; its weights are random, so
// its words are too, but every call below goes the whole way: prompt → chat template → scheduler → llama.cpp.)
import { LanguageModel, Prompt, Tool, Toolkit } from "@effect/ai"
import { Console, Effect, Layer, Logger, LogLevel, Schema, Stream } from "effect"
import { localModelLayer, WeftLanguageModel } from "weft/ai"

const GetTime = Tool.make("GetTime", {
  description: "The current time in a time zone",
  parameters: { zone: Schema.Literal("UTC", "CET") },
  success: Schema.Struct({ time: Schema.String })
})
const Clocks = Toolkit.make(GetTime)
const ClockHandlers = Clocks.toLayer({ GetTime: ({ zone }) => Effect.succeed({ time: `12:00 ${zone}` }) })

const Weather = Schema.Struct({
  city: Schema.Literal("Paris", "Oslo", "Lima"),
  sunny: Schema.Boolean,
  note: Schema.String.pipe(Schema.maxLength(24))
})

const program = Effect.gen(function*() {
  const text = yield* LanguageModel.generateText({ prompt: "Write a line about looms." })
  yield* Console.log(`generateText: ${JSON.stringify(text.text)} (${text.finishReason}, ${text.usage.outputTokens} tokens)`)

  // Each delta is written as it arrives, separated by `|` to show where one ends.
  yield* Effect.sync(() => process.stdout.write("streamText: "))
  yield* LanguageModel.streamText({ prompt: "Count to five." }).pipe(
    Stream.runForEach((part) => (part.type === "text-delta" ? Effect.sync(() => process.stdout.write(`${part.delta}|`)) : Effect.void))
  )
  yield* Console.log("")

  // An object is only complete once its grammar ends it, so it gets more room than the layer's default.
  const weather = yield* LanguageModel.generateObject({ prompt: "The weather, please.", schema: Weather }).pipe(
    WeftLanguageModel.withConfigOverride({ max_tokens: 200 })
  )
  yield* Console.log(`generateObject: ${JSON.stringify(weather.value)}`)

  const prompt = Prompt.make("What time is it in Paris?")
  const called = yield* LanguageModel.generateText({ prompt, toolkit: Clocks, toolChoice: "required" }).pipe(
    WeftLanguageModel.withConfigOverride({ max_tokens: 200 })
  )
  for (const call of called.toolCalls) yield* Console.log(`tool call: ${call.name}(${JSON.stringify(call.params)})`)
  for (const result of called.toolResults) yield* Console.log(`tool result: ${JSON.stringify(result.result)}`)
  const answer = yield* LanguageModel.generateText({ prompt: Prompt.merge(prompt, Prompt.fromResponseParts(called.content)) })
  yield* Console.log(`answer after the tool: ${JSON.stringify(answer.text)}`)
})

const Model = WeftLanguageModel.layer({ model: "demo", config: { seed: 42, max_tokens: 24 } }).pipe(
  Layer.provide(localModelLayer({ modelId: "demo", parallel: 2 })),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

Effect.runPromise(program.pipe(Effect.provide(ClockHandlers), Effect.provide(Model)))
