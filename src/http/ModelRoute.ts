import { Context, Effect, Ref } from "effect"
import { AdapterContexts } from "../host/AdapterContexts.js"
import type { ModelLoading, ModelNotFound, ModelUnloading } from "../host/HostErrors.js"
import type { Engine } from "../host/LocalEngine.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { MemoryManager } from "../memory/MemoryManager.js"
import type { MemoryPressure } from "../memory/MemoryManager.js"

/** The model a request resolved to, kept for its `model` metric label; set by `resolveModel`. */
export class RequestModel extends Context.Tag("weft/http/RequestModel")<RequestModel, Ref.Ref<string | undefined>>() {}

/** Why a request gets no engine. */
export type ResolveFailure = ModelLoading | ModelNotFound | ModelUnloading | MemoryPressure

/** `model:adapter` split at its last `:`; undefined for a plain model id. */
export const adapterOf = (model: string): { readonly model: string; readonly adapter: string } | undefined => {
  const at = model.lastIndexOf(":")
  return at <= 0 || at === model.length - 1 ? undefined : { model: model.slice(0, at), adapter: model.slice(at + 1) }
}

/**
 * The engine serving `model` (`model:adapter` for a LoRA adapter on it), remembered as the request's model; refused
 * while the process is short of memory.
 */
export const resolveModel = (
  model: string
): Effect.Effect<Engine, ResolveFailure, ModelRegistry | MemoryManager | AdapterContexts | RequestModel> => {
  const adapter = adapterOf(model)
  const whole = Effect.flatMap(ModelRegistry, (registry) => registry.resolve(model))
  // A registered id with colons in it (a fine-tuned `ft:base:suffix:job`) is that model, not an adapter.
  const registered = Effect.flatMap(ModelRegistry, (registry) => Effect.map(registry.models, (models) => models.some((status) => status.id === model)))
  const engine: Effect.Effect<Engine, ResolveFailure, ModelRegistry | AdapterContexts> = adapter === undefined
    ? whole
    : Effect.if(registered, { onTrue: () => whole, onFalse: () => Effect.flatMap(AdapterContexts, (adapters) => adapters.resolve(adapter.model, adapter.adapter)) })
  return Effect.flatMap(MemoryManager, (memory) => memory.admit).pipe(
    Effect.zipRight(engine),
    Effect.tap((resolved) => Effect.flatMap(RequestModel, (current) => Ref.set(current, resolved.backend.info.id)))
  )
}

/** The label of requests that name no model: the model's id when exactly one is registered and serving. */
export const soleModelId: Effect.Effect<string, never, ModelRegistry> = Effect.flatMap(ModelRegistry, (registry) =>
  Effect.map(registry.models, (models) => {
    const only = models.length === 1 ? models[0] : undefined
    return only?.state._tag === "Ready" ? only.state.engine.backend.info.id : ""
  }))
