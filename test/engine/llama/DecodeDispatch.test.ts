import { describe, expect, it } from "@effect/vitest"
import { dispatchOnceStepQueued } from "../../../src/engine/llama/DecodeDispatch.js"

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

/** A context's queue and a batcher's released count the test moves by hand; `log` records dispatches and turns. */
const harness = (released: number) => {
  const state = { queued: 0, released }
  const log: Array<string> = []
  const schedule = dispatchOnceStepQueued({ queued: () => state.queued, released: () => state.released })
  return { state, log, schedule, dispatch: () => log.push(`dispatch with ${state.queued} queued`) }
}

describe("dispatchOnceStepQueued", () => {
  it("dispatches at once when every released step is queued (one stream)", () => {
    const { dispatch, log, schedule, state } = harness(1)
    state.queued = 1
    schedule(dispatch)
    expect(log).toEqual(["dispatch with 1 queued"])
  })

  it("waits for the released steps still on their way, then dispatches them together before the next turn", async () => {
    const { dispatch, log, schedule, state } = harness(3)
    state.queued = 1
    schedule(dispatch)
    expect(log).toEqual([])
    // The other two steps are queued a few microtasks later, as node-llama-cpp's generators get to them.
    await Promise.resolve()
    state.queued = 2
    await Promise.resolve()
    await Promise.resolve()
    state.queued = 3
    await Promise.resolve()
    await Promise.resolve()
    log.push("microtasks done")
    await nextTurn()
    expect(log).toEqual(["dispatch with 3 queued", "microtasks done"])
  })

  it("leaves a step that never queues to the next turn, and dispatches once", async () => {
    const { dispatch, log, schedule, state } = harness(2)
    state.queued = 1
    schedule(dispatch)
    for (let i = 0; i < 200; i++) await Promise.resolve()
    expect(log).toEqual([])
    await nextTurn()
    await nextTurn()
    expect(log).toEqual(["dispatch with 1 queued"])
  })

  it("dispatches once when the steps are queued in time, not again on the next turn", async () => {
    const { dispatch, log, schedule, state } = harness(2)
    state.queued = 1
    schedule(dispatch)
    await Promise.resolve()
    state.queued = 2
    await nextTurn()
    await nextTurn()
    expect(log).toEqual(["dispatch with 2 queued"])
  })
})
