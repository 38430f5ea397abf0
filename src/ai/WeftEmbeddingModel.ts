/** Weft as an `@effect/ai` provider: `EmbeddingModel` on a model of the in-process `ModelRegistry`. */
import { EmbeddingModel } from "@effect/ai"
import { Config as EffectConfig, Effect, Layer } from "effect"
import type { ConfigError, Duration } from "effect"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { embeddingTokens, maxEmbeddingInputs } from "../http/EmbeddingRoutes.js"
import { aiErrorOf, engineFor } from "./WeftAiErrors.js"

/** What the layer is built from: the served model's id, how inputs are batched and cached, and per-call timeouts. */
export interface Options {
  readonly model: string
  /** Most inputs embedded in one admission; `@effect/ai` batches concurrent `embed` calls up to it. */
  readonly maxBatchSize?: number | undefined
  /** Keeps embeddings of repeated inputs (`@effect/ai`'s request cache). */
  readonly cache?: { readonly capacity: number; readonly timeToLive: Duration.DurationInput } | undefined
  readonly timeouts?: { readonly queueMs?: number | undefined; readonly totalMs?: number | undefined } | undefined
}

const module = "WeftEmbeddingModel"

/** Builds Weft's `EmbeddingModel` for the registered model `options.model`: each batch is one admission, as on `/v1/embeddings`. */
export const make = (options: Options): Effect.Effect<EmbeddingModel.Service, never, ModelRegistry> =>
  Effect.gen(function*() {
    const registry = yield* ModelRegistry
    const embedMany = (inputs: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const { backend, scheduler } = yield* engineFor(registry, options.model)
        const tokens = yield* Effect.forEach(inputs, (value, index) => embeddingTokens(backend, { param: `input[${index}]`, value }))
        const vectors = yield* scheduler.embed(tokens, options.timeouts)
        return vectors.map((vector, index): EmbeddingModel.Result => ({ index, embeddings: Array.from(vector) }))
      }).pipe(
        Effect.mapError((error) => aiErrorOf(module, "embedMany", error)),
        Effect.withSpan("WeftEmbeddingModel.embedMany")
      )
    return yield* EmbeddingModel.make({
      embedMany,
      maxBatchSize: Math.min(options.maxBatchSize ?? maxEmbeddingInputs, maxEmbeddingInputs),
      ...(options.cache === undefined ? {} : { cache: options.cache })
    })
  })

/** `EmbeddingModel` on the registered model `options.model`. */
export const layer = (options: Options): Layer.Layer<EmbeddingModel.EmbeddingModel, never, ModelRegistry> =>
  Layer.effect(EmbeddingModel.EmbeddingModel, make(options))

/** `layer`, its options read from Effect's `Config` (the environment by default). */
export const layerConfig = (
  options: EffectConfig.Config.Wrap<Options>
): Layer.Layer<EmbeddingModel.EmbeddingModel, ConfigError.ConfigError, ModelRegistry> =>
  Layer.unwrapEffect(Effect.map(EffectConfig.unwrap(options), layer))
