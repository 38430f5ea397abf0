/**
 * One binary's `llama_decode` alone, in the process shape `weft serve` has (Node's default libuv pool, the bench
 * model, 16 sequences of 2,560 cells, flash attention): steps of CONCURRENCY one-token decodes for SECONDS.
 * Comparing binaries this way leaves out everything between decodes, which is the same code for all of them.
 *
 *   npx tsx src/bench/decodeStepProbe.ts prebuilt|native THREADS CONCURRENCY SECONDS
 *
 * Run the binaries alternately, several times each: on a shared or virtual machine one run says little.
 */
import { Effect } from "effect"
import * as path from "node:path"
import { nodeLlamaCppLoader } from "../engine/llama/LlamaBinary.js"
import { ensureModel } from "../model/generateModel.js"
import { defaultBenchSettings } from "./BenchSettings.js"
import { decodeSteps } from "./DecodeCeiling.js"

const [kind, threadsArg = "2", concurrencyArg = "1", secondsArg = "4"] = process.argv.slice(2)
if (kind !== "prebuilt" && kind !== "native") {
  console.error("usage: decodeStepProbe.ts prebuilt|native THREADS CONCURRENCY SECONDS")
  process.exit(2)
}
const threads = Number(threadsArg)
const concurrency = Number(concurrencyArg)
const seconds = Number(secondsArg)

const modelPath = await Effect.runPromise(ensureModel("bench", path.resolve(".weft")))
const llama = await Effect.runPromise(nodeLlamaCppLoader(kind, { gpu: false, maxThreads: threads }))
const model = await llama.loadModel({ modelPath })
const { contextSize } = defaultBenchSettings
const context = await model.createContext({ sequences: 16, contextSize, threads, batchSize: 512, flashAttention: true })
const { msPerStep, tokensPerSecond } = await decodeSteps(context, contextSize, concurrency, seconds, 1)
console.log(
  `${kind} (${llama.buildType}) threads ${threads}, ${concurrency} sequences: ${msPerStep.toFixed(2)} ms per step, ` +
    `${tokensPerSecond.toFixed(1)} tok/s`
)
await context.dispose()
await model.dispose()
await llama.dispose()
