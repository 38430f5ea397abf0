// The tokenizer worker's entry (see OffThreadTokenizer): worker threads run JavaScript, so TypeScript is loaded
// through tsx, whatever started the main thread (tsx, weft's bin, vitest).
import { register } from "tsx/esm/api"

register()
await import(new URL("./TokenizerWorker.ts", import.meta.url).href)
