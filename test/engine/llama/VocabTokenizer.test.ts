import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { FastCheck } from "effect"
import { getLlama, LlamaLogLevel } from "node-llama-cpp"
import type { Llama, LlamaModel } from "node-llama-cpp"
import { chatRenderer } from "../../../src/engine/llama/ChatRenderer.js"
import { makeSpecialTokenSplitter } from "../../../src/engine/llama/SpecialTokenSplitter.js"
import { makeVocabTokenizer, vocabTables } from "../../../src/engine/llama/VocabTokenizer.js"
import type { VocabTables, VocabTokenizer } from "../../../src/engine/llama/VocabTokenizer.js"
import { tinyModelPath } from "../../support/tinyModel.js"

describe("makeSpecialTokenSplitter", () => {
  const split = makeSpecialTokenSplitter([
    { token: 1, text: "<s>", lstrip: false, rstrip: false, alwaysParsed: false },
    { token: 2, text: "<s>x", lstrip: false, rstrip: false, alwaysParsed: false },
    { token: 3, text: "<L>", lstrip: true, rstrip: false, alwaysParsed: false },
    { token: 4, text: "<R>", lstrip: false, rstrip: true, alwaysParsed: false }
  ])

  it("cuts at special texts, longest match first, and strips whitespace where the token says so", () => {
    expect(split("")).toEqual([])
    expect(split("plain")).toEqual(["plain"])
    expect(split("a<s>b<s>xc<s")).toEqual(["a", 1, "b", 2, "c<s"])
    expect(split("a \n<L> b")).toEqual(["a", 3, " b"])
    expect(split("a <R> \n b")).toEqual(["a ", 4, "b"])
    expect(split("  <L><R>  ")).toEqual([3, 4])
  })

  it("splits 2^20 special texts in one pass", () => {
    const pieces = split("<s>".repeat(2 ** 20))
    expect(pieces.length).toBe(2 ** 20)
    expect(pieces.every((piece) => piece === 1)).toBe(true)
  })
})

describe("VocabTokenizer on the tiny model", () => {
  let llama: Llama
  let model: LlamaModel
  let tables: VocabTables
  let tokenizer: VocabTokenizer

  beforeAll(async () => {
    llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error, progressLogs: false })
    model = await llama.loadModel({ modelPath: await tinyModelPath(), vocabOnly: true })
    tables = vocabTables(model, model.fileInfo.metadata.tokenizer.ggml.tokens.length)
    tokenizer = makeVocabTokenizer(model, tables.specials)
  })
  afterAll(async () => {
    await model?.dispose()
    await llama?.dispose()
  })

  it("reads the special tokens and the longest token's bytes", () => {
    expect(tables.specials.map((special) => special.text).sort()).toEqual(["</s>", "<s>", "<unk>", "<|im_end|>", "<|im_start|>"])
    expect(tables.longestTokenBytes).toBeGreaterThanOrEqual(Buffer.byteLength("<|im_start|>"))
  })

  it("resolves a model's chat template once: the tokenizer, the backend and each adapter context share one renderer", () => {
    expect(chatRenderer(model)).toBe(chatRenderer(model))
  })

  const fragments = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<unk>", "<", "s>", "<|", "im_", "a", "hello", " world", " ", "  ", "\n", "ÿ", "é", "日本"]

  it.prop(
    "tokenizes as llama.cpp does, with and without special-token parsing",
    [FastCheck.array(FastCheck.constantFrom(...fragments), { maxLength: 24 }).map((parts) => parts.join("")), FastCheck.boolean()],
    ([text, special]) => {
      expect(tokenizer.tokenize(text, special)).toEqual(Array.from(model.tokenize(text, special)))
    },
    { fastCheck: { numRuns: 300 } }
  )
})
