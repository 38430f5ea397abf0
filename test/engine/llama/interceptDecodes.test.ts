import { describe, expect, it } from "vitest"
import type { LlamaContext } from "node-llama-cpp"
import { interceptDecodes, nativeContextOf } from "../../../src/engine/llama/LlamaInternals.js"
import type { DecodeThreads, NativeContext } from "../../../src/engine/llama/LlamaInternals.js"

/** A context whose native object logs the thread count each decode runs with; `synchronous` adds `decodeBatchSync`. */
const fakeContext = (synchronous: boolean) => {
  const log: Array<string> = []
  let threads = 0
  const native: NativeContext = {
    initBatch: () => undefined,
    addToBatch: () => new Uint32Array(0),
    setThreads: (count) => {
      threads = count
    },
    decodeBatch: () => {
      log.push(`decode on ${threads}`)
      return Promise.resolve()
    },
    sampleToken: (() => Promise.resolve(0)) as NativeContext["sampleToken"],
    ...(synchronous ? { decodeBatchSync: () => void log.push(`decode sync on ${threads}`) } : {})
  }
  return { context: { _ctx: native } as unknown as LlamaContext, log }
}

/** Chooses 1 thread for one token and 2 for more; keeps what it is told. */
const recordingThreads = () => {
  const recorded: Array<[number, number]> = []
  const threads: DecodeThreads = {
    choose: (tokens) => (tokens === 1 ? 1 : 2),
    record: (tokens, count) => void recorded.push([tokens, count])
  }
  return { threads, recorded }
}

describe("interceptDecodes", () => {
  it("sets the chosen threads before each decode, synchronous or not, and records each step's size and threads", async () => {
    const { context, log } = fakeContext(true)
    const { recorded, threads } = recordingThreads()
    interceptDecodes(context, threads)
    const native = nativeContextOf(context)
    native.initBatch(1)
    native.decodeBatchSync!()
    native.initBatch(16)
    await native.decodeBatch()
    native.initBatch(1)
    native.decodeBatchSync!()
    expect(log).toEqual(["decode sync on 1", "decode on 2", "decode sync on 1"])
    expect(recorded).toEqual([[1, 1], [16, 2], [1, 1]])
  })

  it("has no synchronous decode where the binary has none", () => {
    const { context } = fakeContext(false)
    interceptDecodes(context, recordingThreads().threads)
    expect(nativeContextOf(context).decodeBatchSync).toBeUndefined()
  })
})
