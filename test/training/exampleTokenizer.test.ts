import { Effect } from "effect"
import * as fs from "node:fs"
import { describe, expect, it } from "vitest"
import { loadExampleTokenizer } from "../../src/training/ExampleTokenizer.js"
import { tinyF32ModelPath } from "../support/tinyModel.js"

const childrenFile = `/proc/self/task/${process.pid}/children`

/** The ids of every child process this process starts while `run` runs (Linux). */
const childrenStartedDuring = async <A>(run: () => Promise<A>): Promise<Set<string>> => {
  const seen = new Set<string>()
  const sample = () => {
    for (const id of fs.readFileSync(childrenFile, "utf8").split(" ").filter((id) => id.trim() !== "")) seen.add(id)
  }
  const sampler = setInterval(sample, 1)
  try {
    await run()
  } finally {
    clearInterval(sampler)
  }
  return seen
}

describe("loadExampleTokenizer", () => {
  it.runIf(fs.existsSync(childrenFile))("loads node-llama-cpp once per process: a second tokenizer starts no binary test", async () => {
    const modelPath = await tinyF32ModelPath()
    await Effect.runPromise(loadExampleTokenizer(modelPath))
    const started = await childrenStartedDuring(() => Effect.runPromise(loadExampleTokenizer(modelPath)))
    expect([...started]).toEqual([])
  })
})
