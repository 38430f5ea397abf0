// The tokenizer worker's entry (see OffThreadTokenizer): worker threads run JavaScript, so in a built package it loads
// the compiled worker beside it, and from the sources it loads TypeScript through tsx, whatever started the main
// thread (tsx, weft's bin, vitest).
import { existsSync } from "node:fs"

const compiled = new URL("./TokenizerWorker.js", import.meta.url)
if (existsSync(compiled)) {
  await import(compiled.href)
} else {
  const { register } = await import("tsx/esm/api")
  register()
  await import(new URL("./TokenizerWorker.ts", import.meta.url).href)
}
