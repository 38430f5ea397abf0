import { Context, Effect, Ref } from "effect"
import type { ModelLoading, ModelNotFound, ModelUnloading } from "../host/HostErrors.js"
import type { Engine } from "../host/LocalEngine.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { MemoryManager } from "../memory/MemoryManager.js"
import type { MemoryPressure } from "../memory/MemoryManager.js"

/** The model a request resolved to, kept for its `model` metric label; set by `resolveModel`. */
export class RequestModel extends Context.Tag("weft/http/RequestModel")<RequestModel, Ref.Ref<string | undefined>>() {}

/** Why a request gets no engine. */
export type ResolveFailure = ModelLoading | ModelNotFound | ModelUnloading | MemoryPressure

/** The engine serving `model`, remembered as the request's model; refused while the process is short of memory. */
export const resolveModel = (model: string): Effect.Effect<Engine, ResolveFailure, ModelRegistry | MemoryManager | RequestModel> =>
  Effect.flatMap(MemoryManager, (memory) => memory.admit).pipe(
    Effect.zipRight(Effect.flatMap(ModelRegistry, (registry) => registry.resolve(model))),
    Effect.tap((engine) => Effect.flatMap(RequestModel, (current) => Ref.set(current, engine.backend.info.id)))
  )

/** The label of requests that name no model: the model's id when exactly one is registered and serving. */
export const soleModelId: Effect.Effect<string, never, ModelRegistry> = Effect.flatMap(ModelRegistry, (registry) =>
  Effect.map(registry.models, (models) => {
    const only = models.length === 1 ? models[0] : undefined
    return only?.state._tag === "Ready" ? only.state.engine.backend.info.id : ""
  }))
