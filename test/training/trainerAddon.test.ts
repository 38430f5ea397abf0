import { Effect } from "effect"
import * as fs from "node:fs"
import { describe, expect, it } from "vitest"
import { loadTrainerAddon } from "../../src/training/TrainerAddon.js"
import { tinyF32ModelPath } from "../support/tinyModel.js"

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
})
