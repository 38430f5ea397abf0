// A worker thread that tokenizes large inputs for `OffThreadTokenizer`: it loads the model vocabulary-only and
// answers one request at a time, so superlinear tokenization never runs on the server's event loop.
import { parentPort, workerData } from "node:worker_threads"
import { Effect } from "effect"
import type { Llama, LlamaModel } from "node-llama-cpp"
import { nodeLlamaCppLoader } from "./LlamaBinary.js"
import { errorMessage } from "./errorMessage.js"
import type { TokenizerClose, TokenizerReply, TokenizerRequest, TokenizerStatus, TokenizerWorkerData } from "./OffThreadTokenizer.js"
import { makeVocabTokenizer, vocabTables } from "./VocabTokenizer.js"

const data = workerData as TokenizerWorkerData
const port = parentPort!

/** What this thread loaded, disposed before it ends (see `Close` below). */
let llama: Llama | undefined
let model: LlamaModel | undefined

const vocabulary = (async () => {
  llama = await Effect.runPromise(nodeLlamaCppLoader(data.binary, { gpu: false, maxThreads: 1 }))
  model = await llama.loadModel({ modelPath: data.modelPath, vocabOnly: true })
  // Read here rather than on the main thread: about 2 µs a token (7 ms for the tiny model's 3,072), so some
  // hundreds of milliseconds for a 150k-token vocabulary, which would stall other models' streams.
  return { model, tables: vocabTables(model, data.vocabSize) }
})()

// Ready once the tables are read: the tokenizer's chat template is resolved after that (about a second), while the
// main thread goes on; requests wait for it. Ready is posted first: reactions to one promise run in the order they
// were added, and the template's resolution would otherwise hold the message back.
vocabulary.then(
  ({ tables }) => port.postMessage({ _tag: "Ready", tables } satisfies TokenizerStatus),
  (error: unknown) => port.postMessage({ _tag: "LoadFailed", message: errorMessage(error) } satisfies TokenizerStatus)
)

const loaded = vocabulary.then(({ model, tables }) => ({ tables, tokenizer: makeVocabTokenizer(model, tables.specials) }))
// A template that does not resolve here does not on the main thread either, which then fails the backend's start;
// a request that came anyway is answered Failed below.
loaded.catch(() => undefined)

port.on("message", (request: TokenizerRequest | TokenizerClose) => {
  // Ends the thread from here, once the requests before it are answered and the template is resolved, with the model
  // and llama.cpp disposed first. A thread ended any other way (terminated from outside, or left to its teardown)
  // aborts the whole process now and then: node-llama-cpp's native work still in flight, such as the model's unload,
  // completes in an environment that is going away and throws (an uncaught Napi::Error, `terminate called`).
  if (request._tag === "Close") {
    const dispose = async () => {
      await model?.dispose()
      await llama?.dispose()
    }
    const exit = () => process.exit(0)
    return void loaded.then(dispose, dispose).then(exit, exit)
  }
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
