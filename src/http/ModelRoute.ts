import { Context, Effect, Ref } from "effect"
import type { ModelLoading, ModelNotFound } from "../host/HostErrors.js"
import type { Engine } from "../host/LocalEngine.js"
import { ModelRegistry } from "../host/ModelRegistry.js"

/** The model a request resolved to, kept for its `model` metric label; set by `resolveModel`. */
export class RequestModel extends Context.Tag("weft/http/RequestModel")<RequestModel, Ref.Ref<string | undefined>>() {}

/** The engine serving `model`, remembered as the request's model. */
export const resolveModel = (model: string): Effect.Effect<Engine, ModelLoading | ModelNotFound, ModelRegistry | RequestModel> =>
  Effect.flatMap(ModelRegistry, (registry) => registry.resolve(model)).pipe(
    Effect.tap((engine) => Effect.flatMap(RequestModel, (current) => Ref.set(current, engine.backend.info.id)))
  )

/** The label of requests that name no model: the model's id when exactly one is registered and serving. */
export const soleModelId: Effect.Effect<string, never, ModelRegistry> = Effect.flatMap(ModelRegistry, (registry) =>
  Effect.map(registry.models, (models) => {
    const only = models.length === 1 ? models[0] : undefined
    return only?.state._tag === "Ready" ? only.state.engine.backend.info.id : ""
  }))
