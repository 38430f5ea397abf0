/**
 * What a gap in the running sequences' ids costs one `llama_decode`: one-token steps of the same number of sequences
 * with contiguous and with scattered ids, alternating, 40 rounds; median and mean ms per step. llama.cpp, with one KV
 * stream per sequence as node-llama-cpp creates them, decodes each run of consecutive ids as a micro-batch of its
 * own, which is why `SeqPool` keeps the running sequences' slots next to each other.
 *
 *   npx tsx src/bench/slotGapProbe.ts [native|prebuilt]
 */
import { Effect } from "effect"
import * as path from "node:path"
import { nodeLlamaCppLoader } from "../engine/llama/LlamaBinary.js"
import { nativeContextOf } from "../engine/llama/LlamaInternals.js"
import { ensureModel } from "../model/generateModel.js"

const kind = process.argv[2] ?? "native"
if (kind !== "native" && kind !== "prebuilt") {
  console.error("usage: slotGapProbe.ts [native|prebuilt]")
  process.exit(2)
}
const modelPath = await Effect.runPromise(ensureModel("bench", path.resolve(".weft")))
const llama = await Effect.runPromise(nodeLlamaCppLoader(kind, { gpu: false, maxThreads: 2 }))
const model = await llama.loadModel({ modelPath })
const context = await model.createContext({ sequences: 16, contextSize: 2560, threads: 2, batchSize: 512, flashAttention: true })
for (let sequence = 0; sequence < 16; sequence++) context.getSequence()
const native = nativeContextOf(context)
// An 8-token prompt in each sequence, then one-token steps.
native.initBatch(16 * 8)
for (let sequence = 0; sequence < 16; sequence++) {
  native.addToBatch(sequence, 0, Uint32Array.from({ length: 8 }, (_, index) => 300 + index + sequence), Uint32Array.of(7))
}
await native.decodeBatch()
const positions = Array.from({ length: 16 }, () => 8)
const step = async (sequences: ReadonlyArray<number>) => {
  native.initBatch(sequences.length)
  for (const sequence of sequences) {
    const position = positions[sequence]!
    native.addToBatch(sequence, position, Uint32Array.of(400 + (position % 1000)), Uint32Array.of(0))
    positions[sequence] = position + 1
  }
  const started = performance.now()
  await native.decodeBatch()
  return performance.now() - started
}
const ids = (count: number, skip: ReadonlyArray<number> = []) => [...Array(count + skip.length).keys()].filter((id) => !skip.includes(id))
const sets: Record<string, ReadonlyArray<number>> = {
  "16 (0-15)": ids(16),
  "15 (0-14)": ids(15),
  "15, gap at 7": ids(15, [7]),
  "14, gaps at 3 and 10": ids(14, [3, 10]),
  "8 (0-7)": ids(8),
  "8 (odd ids)": [1, 3, 5, 7, 9, 11, 13, 15]
}
const times: Record<string, Array<number>> = {}
for (let round = 0; round < 40; round++) {
  for (const [name, sequences] of Object.entries(sets)) (times[name] ??= []).push(await step(sequences))
}
console.log(`${kind} (${llama.buildType}), 2 threads, ms per one-token step:`)
for (const [name, steps] of Object.entries(times)) {
  steps.sort((a, b) => a - b)
  const median = steps[steps.length >> 1]!
  const mean = steps.reduce((sum, ms) => sum + ms, 0) / steps.length
  console.log(`  ${name.padEnd(22)} median ${median.toFixed(2).padStart(6)}  mean ${mean.toFixed(2).padStart(6)}`)
}
await context.dispose()
await model.dispose()
await llama.dispose()
