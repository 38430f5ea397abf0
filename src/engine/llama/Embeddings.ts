import { Effect, Option, SynchronizedRef } from "effect"
import type { Scope } from "effect"
import type { LlamaEmbeddingContext, LlamaModel, Token } from "node-llama-cpp"
import { EmbeddingFailed } from "../Backend.js"
import type { BackendShape } from "../Backend.js"
import { l2Normalized } from "../L2Normalized.js"
import { errorMessage } from "./errorMessage.js"

export interface LlamaEmbedderConfig {
  /** KV cells of the embedding context: the longest input it takes, with the tokens node-llama-cpp adds. */
  readonly contextSize: number
  readonly threads: number
}

/**
 * Cells node-llama-cpp may add to an input (a beginning and an end token, by vocabulary type) plus the one it keeps
 * free: `LlamaEmbeddingContext.getEmbeddingFor` refuses an input of `contextSize` tokens or more once they are added.
 */
const reservedCells = 3

/**
 * The backend's `embed` on node-llama-cpp: a `LlamaEmbeddingContext` (a context of its own on the same model weights,
 * created with embeddings on, one sequence) made on first use, so a server that never embeds never pays its KV
 * memory. Inputs are evaluated one after another on its one sequence (node-llama-cpp locks it per input); llama.cpp
 * pools them as the model declares, or takes the last token's hidden state for a decoder-only model that declares no
 * pooling. Vectors are L2-normalized here, as OpenAI's are.
 */
export const makeLlamaEmbedder = (
  model: LlamaModel,
  config: LlamaEmbedderConfig
): Effect.Effect<{ readonly embed: BackendShape["embed"]; readonly maxInputTokens: number; readonly size: number }, never, Scope.Scope> =>
  Effect.gen(function*() {
    const created = yield* SynchronizedRef.make(Option.none<LlamaEmbeddingContext>())
    yield* Effect.addFinalizer(() =>
      Effect.flatMap(SynchronizedRef.get(created), (context) =>
        Option.isSome(context) ? Effect.promise(() => context.value.dispose()) : Effect.void)
    )
    const failed = (error: unknown) => new EmbeddingFailed({ message: errorMessage(error), cause: error })
    // Created at most once; a failed creation is retried by the next request.
    const context = SynchronizedRef.modifyEffect(created, (existing) =>
      Option.isSome(existing)
        ? Effect.succeed([existing.value, existing] as const)
        : Effect.map(
          Effect.tryPromise({
            try: () =>
              model.createEmbeddingContext({ contextSize: config.contextSize, batchSize: config.contextSize, threads: config.threads }),
            catch: failed
          }),
          (made) => [made, Option.some(made)] as const
        ))

    const embed: BackendShape["embed"] = (inputs) =>
      Effect.flatMap(context, (embedding) =>
        Effect.forEach(inputs, (tokens) =>
          Effect.tryPromise({
            try: () => embedding.getEmbeddingFor([...tokens] as Array<Token>),
            catch: failed
          }).pipe(
            Effect.map((result) => l2Normalized(result.vector)),
            // A native evaluation cannot be pre-empted: interruption is observed between inputs.
            Effect.uninterruptible
          )))

    return { embed, maxInputTokens: Math.max(1, config.contextSize - reservedCells), size: model.embeddingVectorSize }
  })
