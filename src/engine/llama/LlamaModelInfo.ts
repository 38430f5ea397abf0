import type { LlamaContext, LlamaModel } from "node-llama-cpp"
import type { ModelInfo } from "../Backend.js"

/** K and V of every layer, f16 (node-llama-cpp's default KV type). */
const kvBytesPerToken = (model: LlamaModel): number => {
  const metadata = model.fileInfo.architectureMetadata as {
    block_count?: number
    embedding_length?: number
    attention?: { head_count?: number; head_count_kv?: number | Array<number> }
  }
  const layers = metadata.block_count ?? 0
  const embedding = metadata.embedding_length ?? 0
  const heads = metadata.attention?.head_count ?? 1
  const kvHeadsRaw = metadata.attention?.head_count_kv ?? heads
  const kvHeads = Array.isArray(kvHeadsRaw) ? Math.max(...kvHeadsRaw) : kvHeadsRaw
  const bytesPerValue = 2
  return 2 * layers * (embedding / heads) * kvHeads * bytesPerValue
}

/** Tokens in `model`'s vocabulary, as its metadata gives them. */
export const llamaVocabSize = (model: LlamaModel): number =>
  (model.fileInfo.architectureMetadata as { vocab_size?: number }).vocab_size ??
    (model.fileInfo.metadata as { tokenizer?: { ggml?: { tokens?: ReadonlyArray<string> } } }).tokenizer?.ggml?.tokens
      ?.length ?? 0

/** What the scheduler needs to know about `model` loaded into `context` with `parallel` sequences (the embedder adds its own). */
export const llamaModelInfo = (
  id: string,
  parallel: number,
  model: LlamaModel,
  context: LlamaContext
): Omit<ModelInfo, "embeddingSize" | "maxEmbeddingTokens"> => ({
  id,
  parallel,
  // node-llama-cpp keeps one cell of each sequence free and asks for a context shift to use it
  // (dist/evaluator/LlamaContext/LlamaContext.js:1977), so one cell fewer is usable.
  contextSize: context.contextSize - 1,
  trainContextSize: model.trainContextSize,
  vocabSize: llamaVocabSize(model),
  kvBytesPerToken: kvBytesPerToken(model),
  bosToken: model.tokens.bos ?? undefined,
  addBosToken: model.tokens.shouldPrependBosToken
})
