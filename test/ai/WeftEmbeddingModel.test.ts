import { AiError, EmbeddingModel } from "@effect/ai"
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel } from "effect"
import * as WeftEmbeddingModel from "../../src/ai/WeftEmbeddingModel.js"
import { InvalidParam } from "../../src/http/HttpErrors.js"
import { observedEngineLayer, schedulerLayer } from "../../src/host/LocalEngine.js"
import { ModelRegistry } from "../../src/host/ModelRegistry.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

const registry = ModelRegistry.layer([{ engine: observedEngineLayer(schedulerLayer(tinyBackend({ parallel: 2, contextSize: 512 }))) }])

const embeddings = WeftEmbeddingModel.layer({ model: tinyModelId }).pipe(
  Layer.provideMerge(registry),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Error))
)

const norm = (vector: ReadonlyArray<number>) => Math.sqrt(vector.reduce((sum, value) => sum + value * value, 0))

describe("WeftEmbeddingModel on the tiny model", () => {
  layer(embeddings, { timeout: 120_000 })((it) => {
    it.effect("embeds on the embedding path: the model's size, L2-normalized, the same vector for the same text, batched or not", () =>
      Effect.gen(function*() {
        const [engine] = yield* Effect.flatMap(ModelRegistry, (registry) => registry.ready)
        const model = yield* EmbeddingModel.EmbeddingModel
        const one = yield* model.embed("the quick brown fox")
        expect(one.length).toBe(engine!.backend.info.embeddingSize)
        expect(norm(one)).toBeCloseTo(1, 5)
        const many = yield* model.embedMany(["a different text", "the quick brown fox"])
        expect(many[1]).toEqual(one)
        expect(many[0]).not.toEqual(one)
      }))

    it.effect("an input the route refuses is a MalformedInput that keeps the route's error", () =>
      Effect.gen(function*() {
        const model = yield* EmbeddingModel.EmbeddingModel
        const error = yield* Effect.flip(model.embed(""))
        expect(error).toBeInstanceOf(AiError.MalformedInput)
        expect(error.cause).toBeInstanceOf(InvalidParam)
      }))
  })
})
