// The tokenizer worker's entry (see OffThreadTokenizer): worker threads run JavaScript, so TypeScript is loaded
// through tsx, whatever started the main thread (tsx, weft's bin, vitest).
import { register } from "tsx/esm/api"

// The worker's two large dependencies are plain JavaScript: loaded before tsx's hooks are registered, so their
// hundreds of modules do not each pass through them (about 2 s of every model load, test servers included).
await import("effect")
await import("node-llama-cpp")
register()
await import(new URL("./TokenizerWorker.ts", import.meta.url).href)
