import { Effect } from "effect"
import type { Scope } from "effect"
import type { LlamaModel } from "node-llama-cpp"
import { ChatTemplateFailed, PromptTooLarge } from "../Backend.js"
import type { BackendShape, ChatMessage } from "../Backend.js"
import { chatRenderer } from "./ChatRenderer.js"
import { errorMessage } from "./errorMessage.js"
import { startOffThreadTokenizer } from "./OffThreadTokenizer.js"
import type { TokenizerWorkerFailed } from "./OffThreadTokenizer.js"
import { makeVocabTokenizer } from "./VocabTokenizer.js"

/**
 * Texts up to this many bytes are tokenized on the main thread: even llama.cpp's worst case (runs of newlines or
 * `ÿ`, quadratic) takes about a millisecond at this size, less than a message round trip to the worker.
 */
export const mainThreadBytes = 4096

/** Bytes allowed beyond `contextSize × longest token`, so the bound never refuses what could fit. */
const marginBytes = 64

/** Bytes of a message's own text: its content and the arguments of the calls it made. */
const messageBytes = (message: ChatMessage): number =>
  Buffer.byteLength(message.content) +
  (message.toolCalls ?? []).reduce((sum, call) => sum + Buffer.byteLength(call.name) + Buffer.byteLength(call.arguments), 0)

export interface BoundedTokenizerConfig {
  readonly modelPath: string
  readonly contextSize: number
  readonly vocabSize: number
  readonly binary: "native" | "prebuilt"
}

/**
 * The backend's `tokenize` and `renderChat`: a text longer in bytes than the context could hold is refused at once
 * (`PromptTooLarge`); a small one is tokenized here, a large one on a worker thread, so no input stalls the event loop.
 */
export const makeBoundedTokenizer = (
  model: LlamaModel,
  config: BoundedTokenizerConfig
): Effect.Effect<Pick<BackendShape, "tokenize" | "renderChat">, TokenizerWorkerFailed, Scope.Scope> =>
  Effect.gen(function*() {
    const loading = yield* startOffThreadTokenizer({ modelPath: config.modelPath, vocabSize: config.vocabSize, binary: config.binary })
    // Resolving the chat template takes about a second: done here while the worker loads, not after (it is kept per
    // model, so `makeVocabTokenizer` below finds it resolved).
    chatRenderer(model)
    const offThread = yield* loading
    const tables = offThread.tables
    const local = makeVocabTokenizer(model, tables.specials)
    const maxBytes = config.contextSize * tables.longestTokenBytes + marginBytes
    const tooLarge = (bytes: number) =>
      bytes > maxBytes ? new PromptTooLarge({ bytes, maxBytes, contextSize: config.contextSize }) : undefined

    const tokenize: BackendShape["tokenize"] = (text, options) =>
      Effect.suspend(() => {
        const special = options?.special ?? false
        const bytes = Buffer.byteLength(text)
        return tooLarge(bytes) ??
          (bytes <= mainThreadBytes ? Effect.sync(() => local.tokenize(text, special)) : offThread.tokenize(text, special))
      })

    // The template only adds text around the messages, so their own bytes are a lower bound of the rendered prompt's.
    const renderChat: BackendShape["renderChat"] = (messages: ReadonlyArray<ChatMessage>, tools) =>
      Effect.suspend((): Effect.Effect<ReadonlyArray<number>, ChatTemplateFailed | PromptTooLarge> => {
        const bytes = messages.reduce((sum, message) => sum + messageBytes(message), 0) +
          (tools === undefined ? 0 : Buffer.byteLength(JSON.stringify(tools)))
        return tooLarge(bytes) ?? (bytes <= mainThreadBytes
          ? Effect.try({
            try: () => local.renderChat(messages, tools),
            catch: (error) => new ChatTemplateFailed({ message: errorMessage(error) })
          })
          : offThread.renderChat(messages, tools))
      })

    return { tokenize, renderChat }
  })
