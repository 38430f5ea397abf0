import { AiError } from "@effect/ai"
import { Effect } from "effect"
import { StructuredOutputInvalid } from "../engine/Backend.js"
import type { ModelNotFound, ModelUnloading } from "../host/HostErrors.js"
import { ModelLoadFailed } from "../engine/llama/LlamaBackend.js"
import { ModelWriteFailed } from "../model/generateModel.js"
import type { Engine, EngineStartFailed } from "../host/LocalEngine.js"
import type { ModelRegistryShape } from "../host/ModelRegistry.js"
import { errorReply } from "../http/OpenAiErrors.js"
import type { ApiFailure } from "../http/OpenAiErrors.js"

/** What can fail a library call before it is an `AiError`: a request failure, or the model not starting. */
export type WeftFailure = ApiFailure | EngineStartFailed | AiError.AiError

const isStartFailure = (error: WeftFailure): error is EngineStartFailed =>
  error instanceof ModelLoadFailed || error instanceof ModelWriteFailed

/**
 * `error` as `@effect/ai`'s `AiError`, keeping it as the cause: what the HTTP API answers with a 400 is the caller's
 * input (`MalformedInput`), output that breaks its schema is `MalformedOutput`, anything else (queue full, timeouts,
 * engine failures, cancellation) is `UnknownError`, described as the HTTP API describes it.
 */
export const aiErrorOf = (module: string, method: string, error: WeftFailure): AiError.AiError => {
  if (AiError.isAiError(error)) return error
  if (isStartFailure(error)) {
    return new AiError.UnknownError({ module, method, description: `The model failed to start: ${error.message}`, cause: error })
  }
  if (error instanceof StructuredOutputInvalid) {
    return new AiError.MalformedOutput({ module, method, description: `The output does not match its schema: ${error.violation}`, cause: error })
  }
  const reply = errorReply(error)
  const description = reply.error.code === null ? reply.error.message : `${reply.error.message} (${reply.error.code})`
  return reply.status === 400
    ? new AiError.MalformedInput({ module, method, description, cause: error })
    : new AiError.UnknownError({ module, method, description, cause: error })
}

/** The engine serving `model`, waiting for the registry's models to load if one is still loading. */
export const engineFor = (registry: ModelRegistryShape, model: string): Effect.Effect<Engine, ModelNotFound | ModelUnloading | EngineStartFailed> =>
  registry.resolve(model).pipe(
    Effect.catchTag("ModelLoading", () =>
      Effect.zipRight(
        registry.ready,
        // Every registered model has loaded by now, so it can no longer be loading.
        registry.resolve(model).pipe(Effect.catchTag("ModelLoading", (loading) => Effect.die(loading)))
      ))
  )
