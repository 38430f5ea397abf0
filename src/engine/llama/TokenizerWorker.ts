// A worker thread that tokenizes large inputs for `OffThreadTokenizer`: it loads the model vocabulary-only and
// answers one request at a time, so superlinear tokenization never runs on the server's event loop.
import { parentPort, workerData } from "node:worker_threads"
import { Effect } from "effect"
import { nodeLlamaCppLoader } from "./LlamaBinary.js"
import { errorMessage } from "./errorMessage.js"
import type { TokenizerReply, TokenizerRequest, TokenizerStatus, TokenizerWorkerData } from "./OffThreadTokenizer.js"
import { makeVocabTokenizer, vocabTables } from "./VocabTokenizer.js"

const data = workerData as TokenizerWorkerData
const port = parentPort!

const vocabulary = (async () => {
  const llama = await Effect.runPromise(nodeLlamaCppLoader(data.binary, { gpu: false, maxThreads: 1 }))
  const model = await llama.loadModel({ modelPath: data.modelPath, vocabOnly: true })
  // Read here rather than on the main thread: about 2 µs a token (7 ms for the tiny model's 3,072), so some
  // hundreds of milliseconds for a 150k-token vocabulary, which would stall other models' streams.
  return { model, tables: vocabTables(model, data.vocabSize) }
})()

// Ready once the tables are read: the tokenizer's chat template is resolved after that (about a second), while the
// main thread resolves its own; requests wait for it.
const loaded = vocabulary.then(({ model, tables }) => ({ tables, tokenizer: makeVocabTokenizer(model, tables.specials) }))
// A template that does not resolve here does not on the main thread either, which then fails the backend's start;
// a request that came anyway is answered Failed below.
loaded.catch(() => undefined)

vocabulary.then(
  ({ tables }) => port.postMessage({ _tag: "Ready", tables } satisfies TokenizerStatus),
  (error: unknown) => port.postMessage({ _tag: "LoadFailed", message: errorMessage(error) } satisfies TokenizerStatus)
)

port.on("message", (request: TokenizerRequest) => {
  const answer = (reply: TokenizerReply) => {
    if (reply._tag === "Tokens") port.postMessage(reply, [reply.tokens.buffer as ArrayBuffer])
    else port.postMessage(reply)
  }
  loaded.then(
    ({ tokenizer }) => {
      try {
        const tokens = request._tag === "Tokenize" ? tokenizer.tokenize(request.text, request.special) : tokenizer.renderChat(request.messages, request.tools)
        answer({ _tag: "Tokens", id: request.id, tokens: Uint32Array.from(tokens) })
      } catch (error) {
        answer({ _tag: request._tag === "RenderChat" ? "TemplateFailed" : "Failed", id: request.id, message: errorMessage(error) })
      }
    },
    (error: unknown) => answer({ _tag: "Failed", id: request.id, message: `the tokenizer worker could not load the model: ${errorMessage(error)}` })
  )
})
