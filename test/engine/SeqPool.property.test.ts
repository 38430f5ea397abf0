import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, FastCheck as fc, Layer, Scope } from "effect"
import { Backend, DecodeFailed } from "../../src/engine/Backend.js"
import { defaultSampling } from "../../src/engine/SamplingOptions.js"
import { PrefixCacheConfig, SeqPool } from "../../src/engine/SeqPool.js"
import type { SlotLease } from "../../src/engine/SeqPool.js"
import { makeSimBackend } from "../../src/engine/SimBackend.js"

type Operation =
  | { readonly _tag: "Acquire"; readonly prompt: ReadonlyArray<number>; readonly key: "a" | "b"; readonly generate: number }
  | { readonly _tag: "Release"; readonly pick: number; readonly failed: boolean }

/** Prompts drawn from a few shared stems, so prefixes overlap in many ways. */
const prompt = fc
  .tuple(fc.constantFrom([1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9], [7, 7, 7, 7], [1, 2]), fc.array(fc.integer({ min: 10, max: 13 }), { maxLength: 5 }))
  .map(([stem, tail]) => [...stem, ...tail])

const operation: fc.Arbitrary<Operation> = fc.oneof(
  fc.record({ _tag: fc.constant("Acquire" as const), prompt, key: fc.constantFrom<"a" | "b">("a", "b"), generate: fc.integer({ min: 0, max: 4 }) }),
  fc.record({ _tag: fc.constant("Release" as const), pick: fc.nat(), failed: fc.boolean() })
)

const sharedPrefix = (a: ReadonlyArray<number>, b: ReadonlyArray<number>) => {
  let index = 0
  while (index < a.length && index < b.length && a[index] === b[index]) index++
  return index
}

const parallel = 3

const runOperations = (operations: ReadonlyArray<Operation>, maxCachedTokens: number | undefined) => {
  const sim = makeSimBackend({ parallel, contextSize: 64, tokenLatency: 0 })
  const layer = SeqPool.Default.pipe(
    Layer.provide(PrefixCacheConfig.layer({ maxCachedTokens })),
    Layer.provide(Layer.succeed(Backend, sim))
  )
  return Effect.gen(function*() {
    const pool = yield* SeqPool
    const held: Array<{ lease: SlotLease; scope: Scope.CloseableScope }> = []
    /** Key of the request that last ran on each slot: its cached cells belong to that key. */
    const slotKey: Array<string | undefined> = []
    let cacheHits = 0

    const checkAccounting = Effect.gen(function*() {
      const stats = yield* pool.stats
      const cells = Array.from({ length: parallel }, (_, slot) => sim.cells(slot)).reduce((a, b) => a + b, 0)
      expect(stats.runningTokens + stats.cachedTokens).toBe(cells)
      for (const { lease } of held) {
        expect(stats.holders.find((holder) => holder.slot === lease.slot)?.cells).toBe(sim.cells(lease.slot))
      }
    })

    for (const op of operations) {
      if (op._tag === "Acquire") {
        if (held.length === parallel) continue
        const heldSlots = new Set(held.map(({ lease }) => lease.slot))
        let best = 0
        for (let slot = 0; slot < parallel; slot++) {
          if (heldSlots.has(slot) || slotKey[slot] !== op.key) continue
          best = Math.max(best, Math.min(sharedPrefix(sim.tokensOf(slot), op.prompt), op.prompt.length - 1))
        }
        const scope = yield* Scope.make()
        const lease = yield* Scope.extend(pool.acquire(`r${held.length}`, { prompt: op.prompt, cacheKey: op.key }), scope)
        // The chosen slot shares a maximal prefix with the prompt, and holds exactly that prefix now.
        expect(lease.reusedTokens).toBe(best)
        expect(sim.tokensOf(lease.slot)).toEqual(op.prompt.slice(0, best))
        if (best > 0) cacheHits++
        slotKey[lease.slot] = op.key
        const generation = yield* Scope.extend(
          sim.start(lease.slot, op.prompt.slice(lease.reusedTokens), { ...defaultSampling, seed: 1 }),
          scope
        )
        for (let step = 0; step <= op.generate; step++) yield* lease.setCells((yield* generation.next).cells)
        held.push({ lease, scope })
      } else {
        if (held.length === 0) continue
        const [{ lease, scope }] = held.splice(op.pick % held.length, 1)
        const others = held.map(({ lease: other }) => [other.slot, sim.tokensOf(other.slot)] as const)
        const exit = op.failed ? Exit.fail(new DecodeFailed({ slot: lease.slot, stage: "decode", message: "x" })) : Exit.void
        yield* Scope.close(scope, exit)
        // Eviction never touches a running request's cells.
        for (const [slot, tokens] of others) expect(sim.tokensOf(slot)).toEqual(tokens)
        if (op.failed) expect(sim.cells(lease.slot)).toBe(0)
      }
      yield* checkAccounting
      const stats = yield* pool.stats
      if (maxCachedTokens !== undefined) expect(stats.cachedTokens).toBeLessThanOrEqual(0.8 * maxCachedTokens)
    }
    for (const { scope } of held.splice(0)) yield* Scope.close(scope, Exit.void)
    yield* checkAccounting
    expect((yield* pool.stats).free).toBe(parallel)
    return cacheHits
  }).pipe(Effect.provide(layer))
}

describe("SeqPool prefix cache properties (SimBackend)", () => {
  it.live("maximal shared prefix, running cells never evicted, accounting equals the backend", () =>
    Effect.gen(function*() {
      let hits = 0
      yield* Effect.promise(() =>
        fc.assert(
          fc.asyncProperty(
            fc.array(operation, { minLength: 1, maxLength: 40 }),
            fc.option(fc.integer({ min: 0, max: 30 }), { nil: undefined }),
            (operations, maxCachedTokens) =>
              Effect.runPromise(Effect.map(runOperations(operations, maxCachedTokens), (count) => void (hits += count)))
          ),
          { numRuns: 300 }
        )
      )
      expect(hits).toBeGreaterThan(0)
    }))
})
