import { describe, expect, it } from "vitest"
import { getLlama, LlamaLogLevel } from "node-llama-cpp"
import type { Token } from "node-llama-cpp"
import { DirectSteps, synchronousDecodeMaxTokens } from "../../../src/engine/llama/DirectSteps.js"
import { withContextLock } from "../../../src/engine/llama/LlamaInternals.js"
import type { NativeContext, NativeSampler, SequenceState } from "../../../src/engine/llama/LlamaInternals.js"
import { tinyModelPath } from "../../support/tinyModel.js"

/**
 * A native context that logs what it is asked and samples `100 × sequence + position` of the sampled token; with
 * `synchronous`, it also has the native build's `decodeBatchSync` and `sampleTokenSync`, logged with "sync".
 */
const fakeNative = (
  options: {
    readonly failDecode?: (decode: number) => boolean
    readonly failSample?: (sequence: number) => boolean
    readonly synchronous?: boolean
  } = {}
) => {
  const log: Array<string> = []
  let decodes = 0
  let batch: Array<{ sequence: number; position: number }> = []
  let logits: Array<{ sequence: number; position: number }> = []
  const native: NativeContext = {
    initBatch: (size) => {
      batch = []
      log.push(`init ${size}`)
    },
    addToBatch: (sequenceId, firstPosition, tokens, logitIndexes) => {
      log.push(`add ${sequenceId}@${firstPosition}:${tokens.length}${logitIndexes.length > 0 ? "+" : ""}`)
      const indexes = Array.from(logitIndexes, (index) => batch.length + index)
      for (let index = 0; index < tokens.length; index++) batch.push({ sequence: sequenceId, position: firstPosition + index })
      return Uint32Array.from(indexes)
    },
    setThreads: () => undefined,
    decodeBatch: () => {
      try {
        decode("decode")
        return Promise.resolve()
      } catch (error) {
        return Promise.reject(error)
      }
    },
    sampleToken: ((index: number, _sampler: NativeSampler, probabilities?: boolean) =>
      Promise.resolve(sampled("sample", index, probabilities))) as NativeContext["sampleToken"],
    ...(options.synchronous === true
      ? {
        decodeBatchSync: () => decode("decode sync"),
        sampleTokenSync: ((index: number, _sampler: NativeSampler, probabilities?: boolean) =>
          Promise.resolve(sampled("sample sync", index, probabilities))) as NativeContext["sampleToken"]
      }
      : {})
  }
  function decode(entry: string) {
    decodes += 1
    log.push(entry)
    if (options.failDecode?.(decodes) === true) throw new Error("decode failed")
    logits = batch
  }
  function sampled(entry: string, index: number, probabilities: boolean | undefined) {
    const { position, sequence } = logits[index]!
    log.push(`${entry} ${sequence}`)
    const token = options.failSample?.(sequence) === true ? -1 : 100 * sequence + position
    return probabilities === true ? [token, [token, 0.5, 7, 0.25]] : token
  }
  return { native, log }
}

const sequence = (sequenceId: number, start = 0): SequenceState & { tokens: Array<number> } => {
  const tokens: Array<number> = Array.from({ length: start }, () => 0)
  return {
    sequenceId,
    tokens,
    get nextTokenIndex() {
      return tokens.length
    },
    advance: (added) => void tokens.push(...added)
  }
}

const sampler: NativeSampler = { applyConfig: () => undefined, dispose: () => undefined }
const sample = { sampler, probabilities: false }
const tokens = (count: number) => Array.from({ length: count }, (_, index) => (index + 1) as Token)

let exclusiveRuns = 0
const stepsOn = (native: NativeContext, batchSize = 512, contextSize = 64, synchronous?: boolean) =>
  new DirectSteps(native, {
    batchSize,
    contextSize,
    exclusive: (use) => {
      exclusiveRuns += 1
      return use()
    },
    synchronous
  })

describe("DirectSteps", () => {
  it("sends the steps queued in one turn as one decode, in sequence id order, and samples each after it", async () => {
    const { log, native } = fakeNative()
    const steps = stepsOn(native)
    const [a, b, c] = [sequence(2, 5), sequence(0), sequence(1, 3)]
    const runsBefore = exclusiveRuns
    const results = await Promise.all([
      steps.step({ sequence: a, tokens: tokens(1), sample }),
      steps.step({ sequence: b, tokens: tokens(4), sample }),
      steps.step({ sequence: c, tokens: tokens(1), sample })
    ])
    // llama.cpp makes a micro-batch of each run of consecutive ids: in id order, one takes a token of every sequence.
    expect(log).toEqual(["init 6", "add 0@0:4+", "add 1@3:1+", "add 2@5:1+", "decode", "sample 0", "sample 1", "sample 2"])
    expect(results.map((result) => result?.token)).toEqual([205, 3, 103])
    expect([a.nextTokenIndex, b.nextTokenIndex, c.nextTokenIndex]).toEqual([6, 4, 4])
    expect(exclusiveRuns).toBe(runsBefore + 1)
  })

  it("evaluates without sampling, and passes the probabilities on when asked for", async () => {
    const { log, native } = fakeNative()
    const steps = stepsOn(native)
    const a = sequence(0)
    expect(await steps.step({ sequence: a, tokens: tokens(3) })).toBeUndefined()
    const sampled = await steps.step({ sequence: a, tokens: tokens(1), sample: { sampler, probabilities: true } })
    expect(sampled).toEqual({ token: 3, probabilities: new Map([[3, 0.5], [7, 0.25]]) })
    expect(log).toEqual(["init 3", "add 0@0:3", "decode", "init 1", "add 0@3:1+", "decode", "sample 0"])
  })

  it("splits a step larger than the batch into decodes in order, each sampled before the next", async () => {
    const { log, native } = fakeNative()
    const steps = stepsOn(native, 8)
    const [a, b, c] = [sequence(0), sequence(1), sequence(2)]
    await Promise.all([
      steps.step({ sequence: a, tokens: tokens(5), sample }),
      steps.step({ sequence: b, tokens: tokens(5), sample }),
      steps.step({ sequence: c, tokens: tokens(1), sample })
    ])
    expect(log).toEqual([
      "init 5", "add 0@0:5+", "decode", "sample 0",
      "init 6", "add 1@0:5+", "add 2@0:1+", "decode", "sample 1", "sample 2"
    ])
  })

  it("fails every step of a failed decode, leaves their sequences as they were, and goes on decoding", async () => {
    const { native } = fakeNative({ failDecode: (decode) => decode === 1 })
    const steps = stepsOn(native)
    const [a, b] = [sequence(0, 2), sequence(1, 2)]
    const failed = await Promise.allSettled([
      steps.step({ sequence: a, tokens: tokens(1), sample }),
      steps.step({ sequence: b, tokens: tokens(1), sample })
    ])
    expect(failed.map((result) => result.status)).toEqual(["rejected", "rejected"])
    expect([a.nextTokenIndex, b.nextTokenIndex]).toEqual([2, 2])
    expect((await steps.step({ sequence: a, tokens: tokens(1), sample }))?.token).toBe(2)
  })

  it("refuses a step that would fill its sequence, an empty one and one beyond the batch, and decodes the rest", async () => {
    const { log, native } = fakeNative()
    const steps = stepsOn(native, 8, 10)
    const [full, empty, large, fine] = [sequence(0, 8), sequence(1), sequence(2), sequence(3, 8)]
    const results = await Promise.allSettled([
      // The last cell stays free: 8 + 2 tokens reach it.
      steps.step({ sequence: full, tokens: tokens(2), sample }),
      steps.step({ sequence: empty, tokens: [], sample }),
      steps.step({ sequence: large, tokens: tokens(9), sample }),
      steps.step({ sequence: fine, tokens: tokens(1), sample })
    ])
    expect(results.map((result) => result.status)).toEqual(["rejected", "rejected", "rejected", "fulfilled"])
    expect(String((results[0] as PromiseRejectedResult).reason)).toContain("the sequence is full")
    expect(log).toEqual(["init 1", "add 3@8:1+", "decode", "sample 3"])
    expect(full.nextTokenIndex).toBe(8)
  })

  it("fails only the step whose sampling fails", async () => {
    const { native } = fakeNative({ failSample: (sequenceId) => sequenceId === 1 })
    const steps = stepsOn(native)
    const results = await Promise.allSettled([
      steps.step({ sequence: sequence(0), tokens: tokens(1), sample }),
      steps.step({ sequence: sequence(1), tokens: tokens(1), sample })
    ])
    expect(results.map((result) => result.status)).toEqual(["fulfilled", "rejected"])
  })

  it("sends the steps queued while a decode runs together once it is done", async () => {
    const { log, native } = fakeNative()
    const steps = stepsOn(native)
    const [a, b, c] = [sequence(0), sequence(1), sequence(2)]
    const first = steps.step({ sequence: a, tokens: tokens(2), sample })
    await Promise.resolve()
    await Promise.resolve()
    // The first decode is under way: these two wait for it and then go out as one.
    const later = [steps.step({ sequence: b, tokens: tokens(1), sample }), steps.step({ sequence: c, tokens: tokens(1), sample })]
    expect(steps.queued).toBe(2)
    await Promise.all([first, ...later])
    expect(log).toEqual(["init 2", "add 0@0:2+", "decode", "sample 0", "init 2", "add 1@0:1+", "add 2@0:1+", "decode", "sample 1", "sample 2"])
  })
})

describe("DirectSteps, synchronous", () => {
  it("decodes single tokens and samples on the JS thread, and a decode over 64 tokens on a libuv thread", async () => {
    const { log, native } = fakeNative({ synchronous: true })
    const steps = stepsOn(native, 512, 256, true)
    expect(steps.isSynchronous).toBe(true)
    const [a, b] = [sequence(0, 4), sequence(1)]
    expect((await steps.step({ sequence: a, tokens: tokens(1), sample }))?.token).toBe(4)
    expect((await steps.step({ sequence: b, tokens: tokens(synchronousDecodeMaxTokens + 1), sample }))?.token).toBe(164)
    const sampled = await steps.step({ sequence: a, tokens: [4 as Token], sample: { sampler, probabilities: true } })
    expect(sampled).toEqual({ token: 5, probabilities: new Map([[5, 0.5], [7, 0.25]]) })
    expect(log).toEqual([
      "init 1", "add 0@4:1+", "decode sync", "sample sync 0",
      "init 65", "add 1@0:65+", "decode", "sample sync 1",
      "init 1", "add 0@5:1+", "decode sync", "sample sync 0"
    ])
  })

  it("uses the libuv calls when not asked to, or when the binary has no synchronous ones", async () => {
    const notAsked = fakeNative({ synchronous: true })
    const unasked = stepsOn(notAsked.native, 512, 64, false)
    await unasked.step({ sequence: sequence(0), tokens: tokens(1), sample })
    expect(unasked.isSynchronous).toBe(false)
    expect(notAsked.log).toEqual(["init 1", "add 0@0:1+", "decode", "sample 0"])
    const prebuilt = fakeNative()
    const unable = stepsOn(prebuilt.native, 512, 64, true)
    await unable.step({ sequence: sequence(0), tokens: tokens(1), sample })
    expect(unable.isSynchronous).toBe(false)
    expect(prebuilt.log).toEqual(["init 1", "add 0@0:1+", "decode", "sample 0"])
  })

  it("lets the event loop run before each synchronous step, and still sends the steps of one turn as one decode", async () => {
    const { log, native } = fakeNative({ synchronous: true })
    const original = native.decodeBatchSync!
    let ioRan = false
    native.decodeBatchSync = () => {
      log.push(`io ran: ${ioRan}`)
      original()
    }
    const steps = stepsOn(native, 512, 64, true)
    const [a, b] = [sequence(0), sequence(1)]
    await Promise.all([steps.step({ sequence: a, tokens: tokens(1), sample }), steps.step({ sequence: b, tokens: tokens(1), sample })])
    // Queued before the next step: it runs before that step's decode blocks the thread.
    setImmediate(() => {
      ioRan = true
    })
    await steps.step({ sequence: a, tokens: tokens(1), sample })
    expect(log).toEqual([
      "init 2", "add 0@0:1+", "add 1@0:1+", "io ran: false", "decode sync", "sample sync 0", "sample sync 1",
      "init 1", "add 0@1:1+", "io ran: true", "decode sync", "sample sync 0"
    ])
  })

  it("fails every step of a failed synchronous decode and only the step whose synchronous sampling fails", async () => {
    const { native } = fakeNative({ synchronous: true, failDecode: (decode) => decode === 1, failSample: (sequenceId) => sequenceId === 1 })
    const steps = stepsOn(native, 512, 64, true)
    const [a, b] = [sequence(0, 2), sequence(1, 2)]
    const failed = await Promise.allSettled([steps.step({ sequence: a, tokens: tokens(1), sample }), steps.step({ sequence: b, tokens: tokens(1), sample })])
    expect(failed.map((result) => result.status)).toEqual(["rejected", "rejected"])
    expect([a.nextTokenIndex, b.nextTokenIndex]).toEqual([2, 2])
    const next = await Promise.allSettled([steps.step({ sequence: a, tokens: tokens(1), sample }), steps.step({ sequence: b, tokens: tokens(1), sample })])
    expect(next.map((result) => result.status)).toEqual(["fulfilled", "rejected"])
  })
})

describe("withContextLock", () => {
  // Were lifecycle-utils resolved to another copy than node-llama-cpp's, the lock would be a different one and direct
  // steps could interleave with node-llama-cpp's KV edits.
  it("is the lock node-llama-cpp's own KV edits take", async () => {
    const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error })
    const model = await llama.loadModel({ modelPath: await tinyModelPath() })
    const context = await model.createContext({ sequences: 1, contextSize: 64 })
    try {
      const sequence = context.getSequence()
      await sequence.evaluateWithoutGeneratingNewTokens([1, 20, 21, 22] as Array<Token>)
      const order: Array<string> = []
      const held = withContextLock(context, async () => {
        order.push("held")
        await new Promise((resolve) => setTimeout(resolve, 50))
        order.push("released")
      })
      const erased = sequence.eraseContextTokenRanges([{ start: 2, end: 4 }]).then(() => order.push("erased"))
      await Promise.all([held, erased])
      expect(order).toEqual(["held", "released", "erased"])
      expect(sequence.contextTokens).toEqual([1, 20])
    } finally {
      await context.dispose()
      await model.dispose()
      await llama.dispose()
    }
  })
})
