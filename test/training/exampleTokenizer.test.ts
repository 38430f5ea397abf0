import { Effect } from "effect"
import * as fs from "node:fs"
import { describe, expect, it } from "vitest"
import { loadExampleTokenizer } from "../../src/training/ExampleTokenizer.js"
import { tinyF32ModelPath } from "../support/tinyModel.js"

const childrenFile = `/proc/self/task/${process.pid}/children`

const children = (): Array<string> => fs.readFileSync(childrenFile, "utf8").split(" ").filter((id) => id.trim() !== "")

/**
 * The ids of every child process this process starts while `run` runs (Linux). Children already running before it
 * (test files share one process, and an earlier file's server may still be exiting) are not counted.
 */
const childrenStartedDuring = async <A>(run: () => Promise<A>): Promise<Set<string>> => {
  const before = new Set(children())
  const seen = new Set<string>()
  const sample = () => {
    for (const id of children()) if (!before.has(id)) seen.add(id)
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

  it("a chat's targets are its assistant turns, each with the token that ends it, and nothing else", async () => {
    const tokenizer = await Effect.runPromise(loadExampleTokenizer(await tinyF32ModelPath()))
    const { targets, tokens } = tokenizer.encode({
      _tag: "Chat",
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "where is the thing?" },
        { role: "assistant", content: "in the garden" },
        { role: "user", content: "and the cat?" },
        { role: "assistant", content: "on the roof\n" }
      ]
    })
    expect(targets.length).toBe(tokens.length)
    const spans: Array<Array<number>> = []
    tokens.forEach((token, at) => {
      if (!targets[at]) return
      if (at === 0 || !targets[at - 1]) spans.push([])
      spans[spans.length - 1]!.push(token)
    })
    expect(spans.map(tokenizer.detokenize)).toEqual(["in the garden<|im_end|>", "on the roof\n<|im_end|>"])
    // The example ends with its last assistant turn, and the rest renders as the chat template renders it.
    expect(tokenizer.detokenize(tokens)).toMatch(/^<s><\|im_start\|> ?system\nBe brief\.<\|im_end\|>.*on the roof\n<\|im_end\|>$/s)
  })

  it("prompt + completion and text examples are targets throughout, after the first token", async () => {
    const tokenizer = await Effect.runPromise(loadExampleTokenizer(await tinyF32ModelPath()))
    for (const example of [{ _tag: "Completion", prompt: "Q: where?\nA:", completion: " here" }, { _tag: "Text", text: "plain words" }] as const) {
      const { targets, tokens } = tokenizer.encode(example)
      expect(targets).toEqual(tokens.map((_, at) => at > 0))
    }
  })
})
