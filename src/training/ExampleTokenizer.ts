import { Effect, Schema } from "effect"
import { nodeLlamaCppLoader } from "../engine/llama/LlamaBinary.js"
import { errorMessage } from "../engine/llama/errorMessage.js"
import type { TrainingExample } from "./datasets/DatasetRecord.js"

/** The model's tokenizer could not be loaded. */
export class TokenizerUnavailable extends Schema.TaggedError<TokenizerUnavailable>()("TokenizerUnavailable", {
  modelPath: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `cannot load the tokenizer of ${this.modelPath}: ${this.reason}`
  }
}

/** Turns examples into the token sequences training sees, with one model's vocabulary and chat template. */
export interface ExampleTokenizer {
  /** Chat through the chat template; prompt + completion and text after BOS; all end with EOS. */
  readonly tokens: (example: TrainingExample) => ReadonlyArray<number>
  /** Tokens of a prompt as inference would see it (chat rendered with the generation prompt). */
  readonly tokenizeText: (text: string) => ReadonlyArray<number>
  readonly contextLength: number
  readonly vocabSize: number
}

/**
 * node-llama-cpp's prebuilt binary, loaded once per process: every load tests the binary in a child process first,
 * which took 8 to 10 s of each training run on the loaded 2-core machine.
 */
const prebuiltLlama = Effect.runSync(Effect.cached(nodeLlamaCppLoader("prebuilt", { gpu: false, maxThreads: 1 })))

/** Loads `modelPath` vocabulary-only (no weights) through node-llama-cpp's prebuilt binary. */
export const loadExampleTokenizer = Effect.fn("loadExampleTokenizer")(function*(modelPath: string) {
  const failed = (cause: unknown) => new TokenizerUnavailable({ modelPath, reason: errorMessage(cause) })
  // Imported here: it loads node-llama-cpp, which commands that never tokenize (`--help`) must not.
  const { makeVocabTokenizer, vocabTables } = yield* Effect.promise(() => import("../engine/llama/VocabTokenizer.js"))
  const llama = yield* prebuiltLlama.pipe(Effect.mapError(failed))
  const model = yield* Effect.tryPromise({ try: () => llama.loadModel({ modelPath, vocabOnly: true }), catch: failed })
  const vocabSize = model.fileInfo.metadata.tokenizer.ggml.tokens.length
  const tokenizer = makeVocabTokenizer(model, vocabTables(model, vocabSize).specials)
  const bos: ReadonlyArray<number> = model.tokens.bos !== null && model.tokens.shouldPrependBosToken ? [model.tokens.bos] : []
  const eos: ReadonlyArray<number> = model.tokens.eos !== null ? [model.tokens.eos] : []
  const tokens = (example: TrainingExample): ReadonlyArray<number> => {
    switch (example._tag) {
      case "Chat":
        return [...tokenizer.renderChat(example.messages), ...eos]
      case "Completion":
        return [...bos, ...tokenizer.tokenize(example.prompt + example.completion, false), ...eos]
      case "Text":
        return [...bos, ...tokenizer.tokenize(example.text, false), ...eos]
    }
  }
  return {
    tokens,
    tokenizeText: (text: string) => [...bos, ...tokenizer.tokenize(text, false)],
    // A vocabulary-only load reports a train context of 0; the file's metadata has it.
    contextLength: model.fileInfo.architectureMetadata.context_length ?? 0,
    vocabSize
  } satisfies ExampleTokenizer
})
