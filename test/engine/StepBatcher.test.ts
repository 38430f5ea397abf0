import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { StepBatcher } from "../../src/engine/StepBatcher.js"

const settle = () => new Promise<void>((resolve) => setImmediate(resolve))

/** A step whose completion the test controls; records when it was issued. */
const controlled = (log: Array<string>, name: string) => {
  let finish: () => void = () => undefined
  const done = new Promise<string>((resolve) => (finish = () => resolve(name)))
  return { issue: () => (log.push(name), done), finish }
}

describe("StepBatcher", () => {
  it("releases the steps of all live generations together, once the last one asks", async () => {
    const batcher = new StepBatcher({ maxWaitMs: 10_000 })
    const [a, b, c] = [batcher.join(), batcher.join(), batcher.join()]
    const log: Array<string> = []
    const steps = ["a", "b", "c"].map((name) => controlled(log, name))
    const results = [a.step(steps[0]!.issue), b.step(steps[1]!.issue)]
    await settle()
    expect(log).toEqual([])
    results.push(c.step(steps[2]!.issue))
    await settle()
    expect(log).toEqual(["a", "b", "c"])
    steps.forEach((step) => step.finish())
    expect(await Promise.all(results)).toEqual(["a", "b", "c"])
  })

  it("waits for steps being decoded to come back rather than splitting the batch", async () => {
    const batcher = new StepBatcher({ maxWaitMs: 1 })
    const [a, b] = [batcher.join(), batcher.join()]
    const log: Array<string> = []
    const first = [controlled(log, "a1"), controlled(log, "b1")]
    const a1 = a.step(first[0]!.issue)
    const b1 = b.step(first[1]!.issue)
    await settle()
    first[0]!.finish()
    await a1
    const a2 = a.step(controlled(log, "a2").issue)
    // b1 is still being decoded: a2 waits for it, however long (the straggler timeout only counts idle time).
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(log).toEqual(["a1", "b1"])
    first[1]!.finish()
    await b1
    await new Promise((resolve) => setTimeout(resolve, 20))
    // b now works between steps: after maxWaitMs a2 goes without it.
    expect(log).toEqual(["a1", "b1", "a2"])
    void a2
  })

  it("goes without a generation that stays between steps longer than maxWaitMs", async () => {
    const batcher = new StepBatcher({ maxWaitMs: 5 })
    const [a] = [batcher.join(), batcher.join()]
    const log: Array<string> = []
    const step = controlled(log, "a")
    const result = a.step(step.issue)
    await new Promise((resolve) => setTimeout(resolve, 30))
    expect(log).toEqual(["a"])
    step.finish()
    expect(await result).toBe("a")
  })

  it("a generation that leaves stops holding the others back, and its own waiting step still runs", async () => {
    const batcher = new StepBatcher({ maxWaitMs: 10_000 })
    const [a, b, c] = [batcher.join(), batcher.join(), batcher.join()]
    const log: Array<string> = []
    const stepA = controlled(log, "a")
    const stepB = controlled(log, "b")
    const resultA = a.step(stepA.issue)
    const resultB = b.step(stepB.issue)
    await settle()
    expect(log).toEqual([])
    b.leave()
    await settle()
    expect(log).toEqual(["b"])
    c.leave()
    await settle()
    expect(log).toEqual(["b", "a"])
    stepA.finish()
    stepB.finish()
    expect(await Promise.all([resultA, resultB])).toEqual(["a", "b"])
    expect(batcher.stats()).toEqual({ live: 1, waiting: 0, inflight: 0 })
  })

  it("an eager step (a new prompt) goes out at once, and the others wait for it before their next step", async () => {
    const batcher = new StepBatcher({ maxWaitMs: 10_000 })
    const [a, b] = [batcher.join(), batcher.join()]
    const log: Array<string> = []
    const stepA = controlled(log, "a")
    const prefill = controlled(log, "b-prefill")
    const resultA = a.step(stepA.issue)
    const resultB = b.step(prefill.issue, { eager: true })
    await settle()
    expect(log).toEqual(["b-prefill"])
    prefill.finish()
    expect(await resultB).toBe("b-prefill")
    // b is between steps now; a still waits for it, then both go together.
    await settle()
    expect(log).toEqual(["b-prefill"])
    const stepB = controlled(log, "b")
    const resultB2 = b.step(stepB.issue)
    await settle()
    expect(log).toEqual(["b-prefill", "a", "b"])
    stepA.finish()
    stepB.finish()
    expect(await Promise.all([resultA, resultB2])).toEqual(["a", "b"])
  })

  it("a failed step frees its generation for the next one", async () => {
    const batcher = new StepBatcher({ maxWaitMs: 10_000 })
    const a = batcher.join()
    await expect(a.step(() => Promise.reject(new Error("decode failed")))).rejects.toThrow("decode failed")
    expect(await a.step(() => Promise.resolve(1))).toBe(1)
    expect(batcher.stats()).toEqual({ live: 1, waiting: 0, inflight: 0 })
  })

  it("every step of random generations is issued exactly once, and steps issued together form whole rounds", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 6 }), async (lengths) => {
        // No straggler timeout: every generation steps or leaves at once, so no round may ever be cut short, however
        // slowly this machine runs the test.
        const batcher = new StepBatcher({ maxWaitMs: 60_000 })
        const issued: Array<Array<number>> = []
        // Steps issued while others of the same group are still being decoded belong to one group (one decode).
        let current: Array<number> | undefined
        let pending = 0
        const issue = (generation: number) => () => {
          if (current === undefined) {
            current = []
            issued.push(current)
          }
          current.push(generation)
          pending += 1
          return new Promise<number>((resolve) =>
            setTimeout(() => {
              pending -= 1
              if (pending === 0) current = undefined
              resolve(generation)
            }, 1)
          )
        }
        const participants = lengths.map(() => batcher.join())
        await Promise.all(lengths.map(async (steps, generation) => {
          const participant = participants[generation]!
          for (let step = 0; step < steps; step++) expect(await participant.step(issue(generation))).toBe(generation)
          participant.leave()
        }))
        expect(issued.flat().length).toBe(lengths.reduce((sum, steps) => sum + steps, 0))
        // Round k holds exactly the generations with more than k steps: no generation ever ran ahead or fell behind.
        issued.forEach((round, index) => {
          expect([...round].sort()).toEqual(lengths.flatMap((steps, generation) => (steps > index ? [generation] : [])))
        })
        expect(batcher.stats()).toEqual({ live: 0, waiting: 0, inflight: 0 })
      }),
      { numRuns: 30 }
    )
  })
})
