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

const parallel = 4

const runOperations = (operations: ReadonlyArray<Operation>, maxCachedTokens: number | undefined, reuseOverContiguity: number) => {
  const sim = makeSimBackend({ parallel, contextSize: 64, tokenLatency: 0 })
  const layer = SeqPool.Default.pipe(
    Layer.provide(PrefixCacheConfig.layer({ maxCachedTokens, reuseOverContiguity })),
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
        // Each free slot: the prompt tokens it would reuse, and how many more runs of consecutive held ids it makes.
        const free = Array.from({ length: parallel }, (_, slot) => slot).filter((slot) => !heldSlots.has(slot)).map((slot) => ({
          slot,
          shared: slotKey[slot] === op.key ? Math.min(sharedPrefix(sim.tokensOf(slot), op.prompt), op.prompt.length - 1) : 0,
          newRuns: 1 - Number(heldSlots.has(slot - 1)) - Number(heldSlots.has(slot + 1))
        }))
        const best = Math.max(...free.map(({ shared }) => shared))
        const scope = yield* Scope.make()
        const lease = yield* Scope.extend(pool.acquire(`r${held.length}`, { prompt: op.prompt, cacheKey: op.key }), scope)
        const chosen = free.find(({ slot }) => slot === lease.slot)!
        if (best >= reuseOverContiguity) {
          // A long enough prefix is reused whole, wherever it is.
          expect(lease.reusedTokens).toBe(best)
        } else {
          // Otherwise the ids stay as contiguous as they can, and the longest prefix among those slots is reused.
          const fewestRuns = Math.min(...free.map(({ newRuns }) => newRuns))
          expect(chosen.newRuns).toBe(fewestRuns)
          expect(lease.reusedTokens).toBe(Math.max(...free.filter(({ newRuns }) => newRuns === fewestRuns).map(({ shared }) => shared)))
        }
        // The slot holds exactly the prefix it reuses now.
        expect(sim.tokensOf(lease.slot)).toEqual(op.prompt.slice(0, lease.reusedTokens))
        if (lease.reusedTokens > 0) cacheHits++
        slotKey[lease.slot] = op.key
        const generation = yield* Scope.extend(
          sim.start(lease.slot, op.prompt.slice(lease.reusedTokens), { ...defaultSampling, seed: 1 }),
          scope
        )
        for (let step = 0; step <= op.generate; step++) lease.setCells((yield* generation.next).cells)
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
  it.live("a long shared prefix or else contiguous ids, running cells never evicted, accounting equals the backend", () =>
    Effect.gen(function*() {
      let hits = 0
      yield* Effect.promise(() =>
        fc.assert(
          fc.asyncProperty(
            fc.array(operation, { minLength: 1, maxLength: 40 }),
            fc.option(fc.integer({ min: 0, max: 30 }), { nil: undefined }),
            fc.integer({ min: 1, max: 5 }),
            (operations, maxCachedTokens, reuseOverContiguity) =>
              Effect.runPromise(Effect.map(runOperations(operations, maxCachedTokens, reuseOverContiguity), (count) => void (hits += count)))
          ),
          { numRuns: 300 }
        )
      )
      expect(hits).toBeGreaterThan(0)
    }))
})

describe("SeqPool slot choice", () => {
  /** Acquires a slot for `prompt` and evaluates what it does not reuse, with one generated token. */
  const runPrompt = (sim: ReturnType<typeof makeSimBackend>, prompt: ReadonlyArray<number>) =>
    Effect.gen(function*() {
      const pool = yield* SeqPool
      const scope = yield* Scope.make()
      const lease = yield* Scope.extend(pool.acquire(`r${prompt.join("-")}`, { prompt }), scope)
      const generation = yield* Scope.extend(sim.start(lease.slot, prompt.slice(lease.reusedTokens), { ...defaultSampling, seed: 1 }), scope)
      lease.setCells((yield* generation.next).cells)
      return { lease, scope }
    })

  const withPool = <A, E>(slots: number, use: (run: (prompt: ReadonlyArray<number>) => ReturnType<typeof runPrompt>) => Effect.Effect<A, E, SeqPool>) => {
    const sim = makeSimBackend({ parallel: slots, contextSize: 64, tokenLatency: 0 })
    return use((prompt) => runPrompt(sim, prompt)).pipe(
      Effect.provide(SeqPool.Default.pipe(
        Layer.provide(PrefixCacheConfig.layer({ reuseOverContiguity: 3 })),
        Layer.provide(Layer.succeed(Backend, sim))
      ))
    )
  }

  it.effect("fills a gap between running sequences before it takes an empty slot", () =>
    withPool(6, (run) =>
      Effect.gen(function*() {
        const running = yield* Effect.forEach([20, 21, 22, 23], (token) => run([1, token, 5]))
        expect(running.map(({ lease }) => lease.slot)).toEqual([0, 1, 2, 3])
        // Slot 1 keeps [1, 21, 5, …] cached; slots 4 and 5 were never used.
        yield* Scope.close(running[1]!.scope, Exit.void)
        const unrelated = yield* run([2, 30, 31])
        expect([unrelated.lease.slot, unrelated.lease.reusedTokens]).toEqual([1, 0])
      })))

  it.effect("reuses a cached prefix of reuseOverContiguity tokens wherever it is, and a shorter one only where it keeps ids contiguous", () =>
    withPool(6, (run) =>
      Effect.gen(function*() {
        const running = yield* Effect.forEach([20, 21, 22, 23, 24, 25], (token) => run([1, token, 5]))
        yield* Scope.close(running[5]!.scope, Exit.void)
        yield* Scope.close(running[2]!.scope, Exit.void)
        // Slot 2 would join two runs, but slot 5 holds three of this prompt's tokens.
        const continued = yield* run([1, 25, 5, 6])
        expect([continued.lease.slot, continued.lease.reusedTokens]).toEqual([5, 3])
        yield* Scope.close(continued.scope, Exit.void)
        // Two shared tokens do not outweigh the gap: slot 2, sharing only the first.
        const shorter = yield* run([1, 25, 9])
        expect([shorter.lease.slot, shorter.lease.reusedTokens]).toEqual([2, 1])
      })))
})
