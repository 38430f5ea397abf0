import { describe, expect, it } from "vitest"
import { pickDeployment } from "../../src/upstream/RoutingStrategy.js"
import type { Candidate } from "../../src/upstream/RoutingStrategy.js"

const candidate = (index: number, overrides: Partial<Candidate> = {}): Candidate => ({
  index, name: `d${index}`, weight: 1, inFlight: 0, picked: 0, latencyMs: undefined, ...overrides
})

/** Routes `count` requests, each counted on the deployment it went to. */
const route = (strategy: Parameters<typeof pickDeployment>[0], candidates: Array<Candidate>, count: number, key?: (i: number) => string) => {
  const chosen: Array<number> = []
  for (let i = 0; i < count; i++) {
    const pick = pickDeployment(strategy, candidates, key?.(i))!
    chosen.push(pick.index)
    candidates[pick.index] = { ...candidates[pick.index]!, picked: candidates[pick.index]!.picked + 1 }
  }
  return chosen
}

describe("routing strategies", () => {
  it("round-robin shares requests by weight", () => {
    const chosen = route("round-robin", [candidate(0, { weight: 3 }), candidate(1)], 400)
    expect(chosen.filter((index) => index === 0)).toHaveLength(300)
  })

  it("least-busy picks the deployment with the fewest requests in flight", () => {
    expect(pickDeployment("least-busy", [candidate(0, { inFlight: 4 }), candidate(1, { inFlight: 1 }), candidate(2, { inFlight: 2 })], undefined)?.index).toBe(1)
  })

  it("lowest-latency tries an unmeasured deployment first, then the lowest EWMA", () => {
    expect(pickDeployment("lowest-latency", [candidate(0, { latencyMs: 50 }), candidate(1)], undefined)?.index).toBe(1)
    expect(pickDeployment("lowest-latency", [candidate(0, { latencyMs: 50 }), candidate(1, { latencyMs: 20 })], undefined)?.index).toBe(1)
  })

  it("session affinity keeps a key on one deployment while it is a candidate, and moves only the keys of one that leaves", () => {
    const all = [candidate(0), candidate(1), candidate(2)]
    const before = Array.from({ length: 60 }, (_, i) => pickDeployment("session-affinity", all, `user-${i}`)!.index)
    expect(Array.from({ length: 60 }, (_, i) => pickDeployment("session-affinity", all, `user-${i}`)!.index)).toEqual(before)
    expect(new Set(before).size).toBe(3)
    const without1 = [candidate(0), candidate(2)]
    const after = Array.from({ length: 60 }, (_, i) => pickDeployment("session-affinity", without1, `user-${i}`)!.index)
    before.forEach((index, i) => {
      if (index !== 1) expect(after[i]).toBe(index)
    })
  })
})
