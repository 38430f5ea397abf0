import { Deferred, Effect, Schema } from "effect"
import type { Scope } from "effect"
import type { Token } from "node-llama-cpp"
import { Worker } from "node:worker_threads"
import { ChatTemplateFailed } from "../Backend.js"
import type { ChatMessage } from "../Backend.js"
import type { ToolFunction } from "../ToolCallSyntax.js"
import type { VocabTables } from "./VocabTokenizer.js"

/** What the tokenizer worker starts from. */
export interface TokenizerWorkerData {
  readonly modelPath: string
  /** Token ids are `0 … vocabSize-1`. */
  readonly vocabSize: number
  /** The binary the backend loaded, so one process never holds two different llama.cpp builds. */
  readonly binary: "native" | "prebuilt"
}

/** A request to the tokenizer worker. */
export type TokenizerRequest =
  | { readonly _tag: "Tokenize"; readonly id: number; readonly text: string; readonly special: boolean }
  | {
    readonly _tag: "RenderChat"
    readonly id: number
    readonly messages: ReadonlyArray<ChatMessage>
    readonly tools: ReadonlyArray<ToolFunction> | undefined
  }

/** Asks the tokenizer worker to end once it has answered the requests before it. */
export interface TokenizerClose {
  readonly _tag: "Close"
}

/** The tokenizer worker's answer to the request with the same id. */
export type TokenizerReply =
  | { readonly _tag: "Tokens"; readonly id: number; readonly tokens: Uint32Array }
  | { readonly _tag: "TemplateFailed"; readonly id: number; readonly message: string }
  | { readonly _tag: "Failed"; readonly id: number; readonly message: string }

/** What the worker says once, when its model is loaded or could not be. */
export type TokenizerStatus = { readonly _tag: "Ready"; readonly tables: VocabTables } | { readonly _tag: "LoadFailed"; readonly message: string }

const workerEntry = new URL("./TokenizerWorker.mjs", import.meta.url)

/** How long a closing backend waits for its tokenizer worker to end itself before terminating it. */
const closeGraceMs = 10_000

/**
 * Tokenization on a worker thread that loads the model vocabulary-only: llama.cpp's tokenizer is superlinear on some
 * texts (2^20 newlines took 97 s), and on the main thread that would stop every stream and `/health`. Requests are
 * answered in order, so a slow one delays the large ones behind it (never the small ones, tokenized on the main
 * thread); one that is interrupted still runs to its end in the worker, its answer dropped.
 *
 * Starts the worker and gives back the wait for it to load, so the caller can do its own part of a model's load
 * meanwhile (the worker's takes a second or more, on another core).
 */
export const startOffThreadTokenizer = (
  data: TokenizerWorkerData
): Effect.Effect<Effect.Effect<OffThreadTokenizer, TokenizerWorkerFailed>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const pending = new Map<number, (reply: TokenizerReply) => void>()
    let nextId = 0
    let gone: string | undefined
    const started = yield* Deferred.make<TokenizerStatus>()
    // The worker ends itself (see TokenizerWorker); terminated only when it has not within `closeGraceMs`, e.g. in a
    // tokenization of minutes.
    const close = (worker: Worker) =>
      new Promise<void>((resolve) => {
        if (gone !== undefined) return resolve()
        const timer = setTimeout(() => void worker.terminate().then(() => resolve()), closeGraceMs)
        worker.once("exit", () => {
          clearTimeout(timer)
          resolve()
        })
        worker.postMessage({ _tag: "Close" } satisfies TokenizerClose)
      })
    const worker = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const worker = new Worker(workerEntry, { workerData: data })
        // An idle worker must not keep the process alive; it is closed with the backend's scope anyway.
        worker.unref()
        worker.on("message", (reply: TokenizerReply | TokenizerStatus) => {
          if (!("id" in reply)) return Deferred.unsafeDone(started, Effect.succeed(reply))
          const resume = pending.get(reply.id)
          pending.delete(reply.id)
          resume?.(reply)
        })
        const fail = (message: string) => {
          gone = message
          Deferred.unsafeDone(started, Effect.succeed({ _tag: "LoadFailed", message }))
          for (const [id, resume] of pending) resume({ _tag: "Failed", id, message })
          pending.clear()
        }
        worker.on("error", (error) => fail(`the tokenizer worker failed: ${error.message}`))
        worker.on("exit", (code) => fail(`the tokenizer worker exited (${code})`))
        return worker
      }),
      (worker) => Effect.promise(() => close(worker))
    )
    const ask = (request: (id: number) => TokenizerRequest) =>
      Effect.async<TokenizerReply>((resume) => {
        const id = nextId++
        if (gone !== undefined) return resume(Effect.succeed({ _tag: "Failed", id, message: gone }))
        pending.set(id, (reply) => resume(Effect.succeed(reply)))
        worker.postMessage(request(id))
        return Effect.sync(() => pending.delete(id))
      })

    // The worker's own failures are defects: the input was already bounded, so nothing the client sent explains them.
    const tokensOf = (reply: TokenizerReply): Effect.Effect<Array<Token>, ChatTemplateFailed> =>
      reply._tag === "Tokens"
        ? Effect.succeed(Array.from(reply.tokens) as Array<Token>)
        : reply._tag === "TemplateFailed"
        ? new ChatTemplateFailed({ message: reply.message })
        : Effect.dieMessage(reply.message)

    const tokenizer = (tables: VocabTables): OffThreadTokenizer => ({
      tables,
      tokenize: (text, special) =>
        // A tokenize request is never answered TemplateFailed.
        Effect.orDie(Effect.flatMap(ask((id) => ({ _tag: "Tokenize", id, text, special })), tokensOf)),
      renderChat: (messages, tools) => Effect.flatMap(ask((id) => ({ _tag: "RenderChat", id, messages, tools })), tokensOf)
    })

    // Loading happens before the backend is ready, so no request waits for it (or measures it as a stall).
    return Effect.flatMap(Deferred.await(started), (status) =>
      status._tag === "LoadFailed"
        ? new TokenizerWorkerFailed({ message: status.message })
        : Effect.succeed(tokenizer(status.tables)))
  })

/** Tokenization on the worker thread. */
export interface OffThreadTokenizer {
  /** The vocabulary as the worker read it. */
  readonly tables: VocabTables
  readonly tokenize: (text: string, special: boolean) => Effect.Effect<Array<Token>>
  readonly renderChat: (
    messages: ReadonlyArray<ChatMessage>,
    tools: ReadonlyArray<ToolFunction> | undefined
  ) => Effect.Effect<Array<Token>, ChatTemplateFailed>
}

/** The tokenizer worker could not start or load the model's vocabulary. */
export class TokenizerWorkerFailed extends Schema.TaggedError<TokenizerWorkerFailed>()("TokenizerWorkerFailed", {
  message: Schema.String
}) {}
