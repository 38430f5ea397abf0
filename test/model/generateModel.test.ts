import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { ChatMLChatWrapper, getLlama, JinjaTemplateChatWrapper, type ChatHistoryItem, type ChatWrapper, type LlamaContextSequence, LlamaLogLevel, resolveChatWrapper, type Token } from "node-llama-cpp"
import { CHATML_TEMPLATE, ensureModel, generateModel, modelFileName } from "../../src/model/generateModel.js"
import { ModelPresets } from "../../src/model/ModelPresets.js"

const workDir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-model-"))
afterAll(() => fs.rmSync(workDir, { recursive: true, force: true }))

const IM_START = 3
const IM_END = 4

/** The tiny model every llama.cpp test loads, generated once. */
const tinyModelPath = Effect.cached(ensureModel("tiny", workDir)).pipe(Effect.runSync)

const loadTinyModel = Effect.gen(function*() {
  const modelPath = yield* tinyModelPath
  const llama = yield* Effect.promise(() => getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error }))
  return yield* Effect.acquireRelease(
    Effect.promise(() => llama.loadModel({ modelPath })),
    (model) => Effect.promise(() => model.dispose())
  )
})

const sample = (sequence: LlamaContextSequence, prompt: Array<Token>, seed: number, count: number) =>
  Effect.promise(async () => {
    const generated: Array<Token> = []
    for await (const token of sequence.evaluate(prompt, { temperature: 0.8, seed })) {
      generated.push(token)
      if (generated.length >= count) break
    }
    return generated
  })

describe("generateModel", () => {
  it.live("writes a small tiny model whose bytes depend only on preset and seed", () =>
    Effect.gen(function*() {
      const first = yield* generateModel({ preset: "tiny", out: path.join(workDir, "a.gguf") })
      const again = yield* generateModel({ preset: "tiny", out: path.join(workDir, "b.gguf"), seed: 42 })
      const otherSeed = yield* generateModel({ preset: "tiny", out: path.join(workDir, "c.gguf"), seed: 43 })

      expect(first.bytes).toBeLessThan(5 * 1024 * 1024)
      expect(first.bytes).toBe(fs.statSync(first.path).size)
      expect(first.parameters).toBeGreaterThan(0)
      const firstBytes = fs.readFileSync(first.path)
      expect(firstBytes.subarray(0, 4).toString("latin1")).toBe("GGUF")
      expect(firstBytes.readUInt32LE(4)).toBe(3)
      expect(firstBytes.equals(fs.readFileSync(again.path))).toBe(true)
      expect(firstBytes.equals(fs.readFileSync(otherSeed.path))).toBe(false)
      expect(otherSeed.bytes).toBe(first.bytes)
      expect(fs.readdirSync(workDir).filter((name) => name.endsWith(".partial"))).toEqual([])
    }))

  it.live("ensureModel generates once and then reuses the file", () =>
    Effect.gen(function*() {
      const dir = path.join(workDir, "ensure", "nested")
      const created = yield* ensureModel("tiny", dir, 7)
      expect(created).toBe(path.join(dir, modelFileName("tiny", 7)))
      expect(path.basename(created)).toBe("weft-tiny-s7.gguf")
      const sentinel = new Date(2000, 0, 1)
      fs.utimesSync(created, sentinel, sentinel)
      const reused = yield* ensureModel("tiny", dir, 7)
      expect(reused).toBe(created)
      expect(fs.statSync(reused).mtime.getTime()).toBe(sentinel.getTime())
    }))

  it.live("fails with ModelWriteFailed when the target cannot be written", () =>
    Effect.gen(function*() {
      const error = yield* generateModel({ preset: "tiny", out: "/dev/null/model.gguf" }).pipe(Effect.flip)
      expect(error._tag).toBe("ModelWriteFailed")
      expect(error.path).toBe("/dev/null/model.gguf")

      const badSeed = yield* generateModel({ preset: "tiny", out: path.join(workDir, "bad.gguf"), seed: -1 }).pipe(
        Effect.flip
      )
      expect(badSeed.reason).toMatch(/seed/)
    }))

  it.scopedLive("loads in node-llama-cpp with a working SentencePiece tokenizer and ChatML template", () =>
    Effect.gen(function*() {
      const model = yield* loadTinyModel
      const dimensions = ModelPresets.tiny

      expect(model.trainContextSize).toBe(dimensions.contextLength)
      expect(model.embeddingVectorSize).toBe(dimensions.embeddingLength)
      expect(model.vocabularyType).toBe("spm")
      expect(model.fileInfo.metadata.tokenizer.ggml.tokens).toHaveLength(dimensions.vocabSize)
      expect(model.fileInfo.metadata.tokenizer.chat_template).toBe(CHATML_TEMPLATE)
      expect(model.tokens.bos).toBe(1)
      expect(model.tokens.eos).toBe(2)
      expect(model.tokens.shouldPrependBosToken).toBe(true)
      expect(model.tokens.shouldAppendEosToken).toBe(false)
      // llama.cpp recognises <|im_end|> by its text and makes it the end-of-turn token.
      expect(model.tokens.eot).toBe(IM_END)
      expect(model.isEogToken(IM_END as Token)).toBe(true)
      expect(model.isEogToken(IM_START as Token)).toBe(false)
      // The template has Hermes-style tools, so node-llama-cpp renders it itself (reading the tool-call syntax from it);
      // a plain chat still renders token for token as its ChatML wrapper renders it.
      const wrapper = resolveChatWrapper(model)
      expect(wrapper).toBeInstanceOf(JinjaTemplateChatWrapper)
      expect((wrapper as JinjaTemplateChatWrapper).usingJinjaFunctionCallTemplate).toBe(true)
      const chatHistory: Array<ChatHistoryItem> = [
        { type: "system", text: "Be brief." },
        { type: "user", text: "hi" },
        { type: "model", response: ["hello"] },
        { type: "user", text: "again" },
        { type: "model", response: [] }
      ]
      const render = (chatWrapper: ChatWrapper) => chatWrapper.generateContextState({ chatHistory }).contextText.tokenize(model.tokenizer)
      expect(render(wrapper)).toEqual(render(new ChatMLChatWrapper()))

      const english = "hello world, the weather"
      const englishTokens = model.tokenize(english)
      expect(englishTokens.length).toBeLessThan(english.length / 2)
      expect(model.detokenize(englishTokens)).toBe(english)

      for (const text of ["héllo 日本 €", "Zürich café: 5€ ø 🙂\nnew line"]) {
        expect(model.detokenize(model.tokenize(text))).toBe(text)
      }

      expect(model.tokenize("<|im_start|>user\nhi<|im_end|>", true)).toEqual(
        expect.arrayContaining([IM_START, IM_END])
      )
      expect(model.tokenize("<|im_start|>", false)).not.toContain(IM_START)
    }))

  it.scopedLive("generates varied tokens that repeat for the same sampling seed", () =>
    Effect.gen(function*() {
      const model = yield* loadTinyModel
      const context = yield* Effect.acquireRelease(
        Effect.promise(() => model.createContext({ contextSize: 256, sequences: 2, threads: 2 })),
        (context) => Effect.promise(() => context.dispose())
      )
      const sequence = context.getSequence()
      const otherSequence = context.getSequence()
      const prompt = [
        model.tokens.bos!,
        ...model.tokenize("<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n", true)
      ]

      const first = yield* sample(sequence, prompt, 1, 20)
      yield* Effect.promise(() => sequence.clearHistory())
      const repeated = yield* sample(sequence, prompt, 1, 20)
      const otherSeed = yield* sample(otherSequence, prompt, 2, 20)

      expect(first).toHaveLength(20)
      expect(new Set(first).size).toBeGreaterThan(5)
      expect(repeated).toEqual(first)
      expect(otherSeed).not.toEqual(first)
    }))
})
