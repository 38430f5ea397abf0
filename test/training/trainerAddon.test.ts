import { Effect } from "effect"
import * as fs from "node:fs"
import { describe, expect, it } from "vitest"
import { loadTrainerAddon } from "../../src/training/TrainerAddon.js"
import { tinyF32ModelPath } from "../support/tinyModel.js"

/** A model opened for training with one thread, and a window of its context (tokens 0 … contextLength). */
const opened = async () => {
  const addon = await Effect.runPromise(loadTrainerAddon)
  const handle = addon.open(await tinyF32ModelPath(), 1, 0)
  const { contextLength, vocabSize } = addon.info(handle)
  addon.setOptimizer(handle, 1e-2, 0)
  const window = new Int32Array(contextLength + 1).map((_, at) => (at * 7) % vocabSize)
  return { addon, handle, contextLength, vocabSize, window }
}

/** Flags for one window: the labels at `rows` count. */
const only = (contextLength: number, ...rows: ReadonlyArray<number>) => new Uint8Array(contextLength).map((_, row) => rows.includes(row) ? 1 : 0)

/** How many threads this process has now (Linux). */
const threadCount = (): number => fs.readdirSync("/proc/self/task").length

describe("the native trainer", () => {
  it.runIf(fs.existsSync("/proc/self/task"))("computes a step on the threads it was opened with, no more", async () => {
    const addon = await Effect.runPromise(loadTrainerAddon)
    const handle = addon.open(await tinyF32ModelPath(), 1, 0)
    const { contextLength, vocabSize } = addon.info(handle)
    addon.setOptimizer(handle, 1e-3, 0)
    const window = new Int32Array(contextLength + 1).map((_, at) => (at * 7) % vocabSize)
    // The first step starts libuv's pool and whatever V8 starts lazily; later steps must add no thread of their own.
    await addon.step(handle, window, true)
    const before = threadCount()
    let most = before
    const sampler = setInterval(() => {
      most = Math.max(most, threadCount())
    }, 1)
    try {
      for (let step = 0; step < 3; step++) await addon.step(handle, window, true)
    } finally {
      clearInterval(sampler)
    }
    // ggml's CPU backend starts threads - 1 helpers per computation: with one thread, none.
    expect(most - before).toBe(0)
  })

  it("a label that does not count leaves the weights exactly as if it were any other token", async () => {
    // Two models trained one step on windows that differ only in their last label (an input to nothing), then both
    // evaluated on the same window: equal when that label does not count, different when it does.
    const evaluatedAfterStep = async (lastLabel: number, targets: (contextLength: number) => Uint8Array | undefined) => {
      const { addon, handle, contextLength, window } = await opened()
      const changed = window.slice()
      changed[contextLength] = lastLabel
      await addon.step(handle, changed, true, targets(contextLength))
      return (await addon.step(handle, window, false)).loss
    }
    const allButLast = (contextLength: number) => new Uint8Array(contextLength).map((_, row) => row < contextLength - 1 ? 1 : 0)
    expect(await evaluatedAfterStep(11, allButLast)).toBe(await evaluatedAfterStep(2000, allButLast))
    expect(await evaluatedAfterStep(11, () => undefined)).not.toBe(await evaluatedAfterStep(2000, () => undefined))
  })

  it("reports loss and accuracy over the labels that count only", async () => {
    const { addon, handle, contextLength, window } = await opened()
    const evaluate = (targets?: Uint8Array) => addon.step(handle, window, false, targets)
    const first = await evaluate(only(contextLength, 3))
    const second = await evaluate(only(contextLength, 100))
    const both = await evaluate(only(contextLength, 3, 100))
    const all = await evaluate()
    expect([first.targets, second.targets, both.targets, all.targets]).toEqual([1, 1, 2, contextLength])
    expect(first.loss).not.toBeCloseTo(second.loss, 3)
    expect(both.loss).toBeCloseTo((first.loss + second.loss) / 2, 5)
    expect(both.accuracy).toBeCloseTo((first.accuracy + second.accuracy) / 2, 9)
    expect(all.tokens).toBe(contextLength)
    // A window in which nothing counts is refused: it would teach nothing and its loss is undefined.
    expect(() => addon.step(handle, window, true, only(contextLength))).toThrow("no label that counts")
  })

  it("close frees a model between steps only, and a closed one refuses work", async () => {
    const { addon, handle, window } = await opened()
    const step = addon.step(handle, window, true)
    expect(() => addon.close(handle)).toThrow("running a step")
    await step
    addon.close(handle)
    addon.close(handle)
    expect(() => addon.step(handle, window, true)).toThrow("closed")
    expect(() => addon.save(handle, "never.gguf")).toThrow("closed")
  })
})
