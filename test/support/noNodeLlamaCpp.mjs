// `node --import ./test/support/noNodeLlamaCpp.mjs …`: any import of node-llama-cpp fails, naming the importer, to
// show that a code path does not load it.
import { register } from "node:module"
import { isMainThread } from "node:worker_threads"

/** Module resolve hook (it runs in Node's loader thread). */
export async function resolve(specifier, context, next) {
  if (specifier === "node-llama-cpp") throw new Error(`node-llama-cpp imported by ${context.parentURL}`)
  return next(specifier, context)
}

if (isMainThread) register(import.meta.url)
