import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { planBatch, prioritizeBySequence } from "../../src/engine/BatchPlan.js"

/** A queued decode as node-llama-cpp keeps it (LlamaContext.js `_queuedDecodes`): the rest of its tokens, by sequence. */
interface Queued {
  readonly sequenceId: number
  tokens: Array<number>
}

/**
 * node-llama-cpp's dispatch loop (LlamaContext.js `dispatchPendingBatch`: `getOrderedQueuedDecodes`,
 * `fitQueuedDecodesToABatch`, `decodeTokenBatchItems`) with our strategy plugged in as LlamaBackend plugs it in:
 * batch items carry the queued decode's own `tokens` array, and the strategy maps it back to its sequence.
 * Returns each batch as the (sequence, token) pairs it evaluated, in batch order.
 */
const dispatchAll = (
  queue: Array<Queued>,
  size: number,
  arrivals: ReadonlyArray<ReadonlyArray<Queued>>
): Array<Array<{ readonly sequenceId: number; readonly token: number }>> => {
  const batches: Array<Array<{ readonly sequenceId: number; readonly token: number }>> = []
  let round = 0
  while (queue.length > 0 || round < arrivals.length) {
    queue.push(...(arrivals[round++] ?? []))
    if (queue.length === 0) continue
    const items = queue.map((decode) => ({ tokens: decode.tokens, logits: [] as Array<boolean>, evaluationPriority: 5 }))
    const sequenceOf = new Map(queue.map((decode) => [decode.tokens as ReadonlyArray<number>, decode.sequenceId]))
    const prioritized = prioritizeBySequence(items, size, (tokens) => sequenceOf.get(tokens))
    // fitQueuedDecodesToABatch
    let left = size
    const fitted: Array<{ readonly decode: Queued; readonly amount: number }> = []
    for (const { item, processAmount } of prioritized) {
      const decode = queue[items.indexOf(item)]!
      const amount = Math.min(processAmount <= 0 ? 1 : processAmount, decode.tokens.length, left)
      if (amount <= 0) {
        if (left === 0) break
        continue
      }
      left -= amount
      fitted.push({ decode, amount })
    }
    // decodeTokenBatchItems: evaluate the leading `amount` tokens, keep the rest queued
    const batch: Array<{ readonly sequenceId: number; readonly token: number }> = []
    for (const { amount, decode } of fitted) {
      for (const token of decode.tokens.slice(0, amount)) batch.push({ sequenceId: decode.sequenceId, token })
      if (amount === decode.tokens.length) queue.splice(queue.indexOf(decode), 1)
      else decode.tokens = decode.tokens.slice(amount)
    }
    batches.push(batch)
    if (batches.length > 10_000) throw new Error("no progress")
  }
  return batches
}

let nextToken = 0
const decode = (sequenceId: number, length: number): Queued => ({
  sequenceId,
  tokens: Array.from({ length }, () => nextToken++)
})

const queuedArbitrary = fc.array(
  fc.record({ sequenceId: fc.integer({ min: 0, max: 15 }), length: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 300 })) }),
  { maxLength: 20 }
)

/** Runs of consecutive, increasing sequence ids in batch order: llama.cpp's non-unified KV makes one micro-batch each. */
const microBatches = (batch: ReadonlyArray<{ readonly sequenceId: number }>): number => {
  const sequences = batch.map((entry) => entry.sequenceId).filter((id, index, all) => index === 0 || all[index - 1] !== id)
  return sequences.filter((id, index) => index === 0 || id !== sequences[index - 1]! + 1).length
}

describe("planBatch", () => {
  it("orders by sequence id, single-token decodes first, prompts filling the rest shortest first", () => {
    const plan = planBatch([
      { sequenceId: 5, tokens: 1 },
      { sequenceId: 2, tokens: 300 },
      { sequenceId: 0, tokens: 1 },
      { sequenceId: 9, tokens: 50 },
      { sequenceId: 3, tokens: 1 }
    ], 100)
    expect(plan).toEqual([
      { index: 2, amount: 1 },
      { index: 1, amount: 47 },
      { index: 4, amount: 1 },
      { index: 0, amount: 1 },
      { index: 3, amount: 50 }
    ])
  })

  it("plans only a sequence's oldest decode, so its tokens stay in order", () => {
    expect(planBatch([{ sequenceId: 1, tokens: 5 }, { sequenceId: 1, tokens: 1 }], 10)).toEqual([{ index: 0, amount: 5 }])
  })

  it("every queued token is decoded exactly once and in order per sequence, in batches of at most `size`", () => {
    fc.assert(
      fc.property(
        queuedArbitrary,
        fc.array(queuedArbitrary, { maxLength: 6 }),
        fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 9, max: 600 })),
        (initial, later, size) => {
          const queue = initial.map(({ length, sequenceId }) => decode(sequenceId, length))
          const arrivals = later.map((round) => round.map(({ length, sequenceId }) => decode(sequenceId, length)))
          const expected = new Map<number, Array<number>>()
          for (const queued of [...queue, ...arrivals.flat()]) {
            const tokens = expected.get(queued.sequenceId) ?? []
            tokens.push(...queued.tokens)
            expected.set(queued.sequenceId, tokens)
          }
          const batches = dispatchAll(queue, size, arrivals)
          const decoded = new Map<number, Array<number>>()
          for (const batch of batches) {
            expect(batch.length).toBeLessThanOrEqual(size)
            expect(batch.length).toBeGreaterThan(0)
            // One entry per sequence, ascending: consecutive ids then form a single llama.cpp micro-batch.
            const order = batch.map((entry) => entry.sequenceId).filter((id, index, all) => index === 0 || all[index - 1] !== id)
            expect(order).toEqual([...new Set(order)].sort((a, b) => a - b))
            for (const { sequenceId, token } of batch) {
              const tokens = decoded.get(sequenceId) ?? []
              tokens.push(token)
              decoded.set(sequenceId, tokens)
            }
          }
          expect(decoded).toEqual(expected)
        }
      ),
      { numRuns: 200 }
    )
  })

  it("a batch of running decodes (one token each, consecutive slots) is one micro-batch, whatever the queue order", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 16 }), fc.integer({ min: 0, max: 1000 }), (streams, shuffle) => {
        const queue = Array.from({ length: streams }, (_, slot) => decode(slot, 1))
        queue.sort((a, b) => ((a.sequenceId * 7919 + shuffle) % 17) - ((b.sequenceId * 7919 + shuffle) % 17))
        const [batch] = dispatchAll(queue, 512, [])
        expect(batch).toHaveLength(streams)
        expect(microBatches(batch!)).toBe(1)
      })
    )
  })

  it("running decodes are never crowded out by a long prompt", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 15 }), fc.integer({ min: 16, max: 512 }), (streams, size) => {
        const queue = [decode(15, 2000), ...Array.from({ length: streams }, (_, slot) => decode(slot, 1))]
        const [first] = dispatchAll(queue, size, [])
        expect(first!.filter((entry) => entry.sequenceId !== 15)).toHaveLength(streams)
        expect(first).toHaveLength(size)
      })
    )
  })
})
