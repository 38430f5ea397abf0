import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { getLlama, LlamaLogLevel, type LlamaModel, type Token } from "node-llama-cpp"
import { generateLora } from "../../src/model/generateLora.js"
import { tinyModelPath } from "../support/tinyModel.js"

const workDir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-lora-"))
afterAll(() => fs.rmSync(workDir, { recursive: true, force: true }))

const greedy = (model: LlamaModel, lora: string | undefined, prompt: Array<Token>) =>
  Effect.acquireUseRelease(
    Effect.promise(() => model.createContext({ contextSize: 256, threads: 2, ...(lora === undefined ? {} : { lora: { adapters: [{ filePath: lora }] } }) })),
    (context) =>
      Effect.promise(async () => {
        const generated: Array<Token> = []
        for await (const token of context.getSequence().evaluate(prompt, { temperature: 0 })) {
          generated.push(token)
          if (generated.length >= 12) break
        }
        return generated
      }),
    (context) => Effect.promise(() => context.dispose())
  )

describe("generateLora", () => {
  it.live("writes a deterministic adapter that llama.cpp loads and that changes what the model generates", () =>
    Effect.gen(function*() {
      const a = yield* generateLora({ base: "tiny", out: path.join(workDir, "a.gguf"), seed: 1 })
      const again = yield* generateLora({ base: "tiny", out: path.join(workDir, "again.gguf"), seed: 1 })
      const b = yield* generateLora({ base: "tiny", out: path.join(workDir, "b.gguf"), seed: 2, rank: 4 })
      expect(fs.readFileSync(a.path).equals(fs.readFileSync(again.path))).toBe(true)
      expect(fs.readFileSync(a.path).equals(fs.readFileSync(b.path))).toBe(false)
      expect(b.bytes).toBeLessThan(a.bytes)

      const llama = yield* Effect.promise(() => getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error }))
      const model = yield* Effect.acquireRelease(
        Effect.promise(() => Effect.runPromise(Effect.promise(tinyModelPath)).then((modelPath) => llama.loadModel({ modelPath }))),
        (loaded) => Effect.promise(() => loaded.dispose())
      )
      const prompt = model.tokenize("the quick brown fox")
      const outputs = yield* Effect.forEach([undefined, a.path, b.path], (lora) => greedy(model, lora, prompt))
      expect(outputs[0]).not.toEqual(outputs[1])
      expect(outputs[0]).not.toEqual(outputs[2])
      expect(outputs[1]).not.toEqual(outputs[2])
    }).pipe(Effect.scoped), 60_000)

  it.live("refuses a rank out of range", () =>
    Effect.gen(function*() {
      const failed = yield* Effect.flip(generateLora({ base: "tiny", out: path.join(workDir, "bad.gguf"), rank: 0 }))
      expect(failed.reason).toContain("rank")
    }))
})
