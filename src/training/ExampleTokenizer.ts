import { Effect, Schema } from "effect"
import { nodeLlamaCppLoader } from "../engine/llama/LlamaBinary.js"
import { errorMessage } from "../engine/llama/errorMessage.js"
import type { Token } from "node-llama-cpp"
import type { TrainingExample, TrainingMessage } from "./datasets/DatasetRecord.js"

/** The model's tokenizer could not be loaded. */
export class TokenizerUnavailable extends Schema.TaggedError<TokenizerUnavailable>()("TokenizerUnavailable", {
  modelPath: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `cannot load the tokenizer of ${this.modelPath}: ${this.reason}`
  }
}

/** An example as training sees it: its tokens, and for each token whether training learns to predict it. */
export interface EncodedExample {
  readonly tokens: ReadonlyArray<number>
  readonly targets: ReadonlyArray<boolean>
}

/** Turns examples into the token sequences training sees, with one model's vocabulary and chat template. */
export interface ExampleTokenizer {
  /**
   * Chat through the chat template, up to the end of its last assistant turn; prompt + completion and text after BOS
   * and ending with EOS.
   */
  readonly tokens: (example: TrainingExample) => ReadonlyArray<number>
  /** `tokens`, with the targets: in a chat only the assistant turns' tokens (and the token ending each), else all. */
  readonly encode: (example: TrainingExample) => EncodedExample
  /** The text of `tokens`, special tokens written out. */
  readonly detokenize: (tokens: ReadonlyArray<number>) => string
  /** Tokens of a prompt as inference would see it (chat rendered with the generation prompt). */
  readonly tokenizeText: (text: string) => ReadonlyArray<number>
  readonly contextLength: number
  readonly vocabSize: number
  /** Frees the vocabulary-only model behind it. */
  readonly dispose: Effect.Effect<void>
}

/** How many leading tokens `a` and `b` share. */
const commonPrefixLength = (a: ReadonlyArray<number>, b: ReadonlyArray<number>): number => {
  let at = 0
  while (at < a.length && at < b.length && a[at] === b[at]) at++
  return at
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
  const render = (messages: ReadonlyArray<TrainingMessage>) => tokenizer.renderChat(messages)
  const encodeChat = (messages: ReadonlyArray<TrainingMessage>): EncodedExample => {
    // A user turn after the last message closes every assistant turn as the template closes turns mid-conversation.
    const full = render([...messages, { role: "user", content: "" }])
    const targets = full.map(() => false)
    let end = full.length
    messages.forEach((message, at) => {
      if (message.role !== "assistant") return
      // The turn starts where the conversation before it, ending with the generation prompt, stops; its content ends
      // where a rendering that leaves it open (last) stops agreeing; the end-of-turn token that follows is learned too.
      const start = commonPrefixLength(render(messages.slice(0, at)), full)
      const contentEnd = Math.max(start, commonPrefixLength(render(messages.slice(0, at + 1)), full))
      const endOfTurn = full.findIndex((token, index) => index >= contentEnd && model.isEogToken(token as Token))
      const stop = endOfTurn === -1 ? contentEnd : endOfTurn + 1
      for (let index = start; index < stop; index++) targets[index] = true
      end = stop
    })
    return { tokens: full.slice(0, end), targets: targets.slice(0, end) }
  }
  const allTargets = (tokens: ReadonlyArray<number>): EncodedExample => ({ tokens, targets: tokens.map((_, index) => index > 0) })
  const encode = (example: TrainingExample): EncodedExample => {
    switch (example._tag) {
      case "Chat":
        return encodeChat(example.messages)
      case "Completion":
        return allTargets([...bos, ...tokenizer.tokenize(example.prompt + example.completion, false), ...eos])
      case "Text":
        return allTargets([...bos, ...tokenizer.tokenize(example.text, false), ...eos])
    }
  }
  const tokens = (example: TrainingExample): ReadonlyArray<number> => encode(example).tokens
  return {
    tokens,
    encode,
    detokenize: (tokens: ReadonlyArray<number>) => model.detokenize(tokens as ReadonlyArray<Token>, true),
    tokenizeText: (text: string) => [...bos, ...tokenizer.tokenize(text, false)],
    // A vocabulary-only load reports a train context of 0; the file's metadata has it.
    contextLength: model.fileInfo.architectureMetadata.context_length ?? 0,
    vocabSize,
    dispose: Effect.promise(() => model.dispose())
  } satisfies ExampleTokenizer
})
