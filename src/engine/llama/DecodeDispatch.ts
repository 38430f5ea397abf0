import type { CustomBatchingDispatchSchedule } from "node-llama-cpp"

/** What `dispatchOnceStepQueued` reads of the context and of the step batcher. */
export interface QueuedSteps {
  /** Decodes queued on the context and not yet dispatched. */
  readonly queued: () => number
  /** Steps the step batcher has released and that have not come back yet. */
  readonly released: () => number
}

/** How many microtasks a schedule looks for the released steps to be queued before leaving it to the next turn. */
const maxChecks = 64

/**
 * node-llama-cpp's `batching.dispatchSchedule`: dispatch the queued decodes as soon as every step the step batcher
 * released is queued, instead of on the next event-loop turn (node-llama-cpp's `nextCycle`, a `setImmediate`).
 *
 * The step batcher already lines up one step of every live generation; waiting a turn only lets other JS run first
 * (the previous token's HTTP write, the other fibers), on the critical path of every token. Each released step reaches
 * node-llama-cpp's queue a few microtasks after its release, so the schedule checks again over the following
 * microtasks. The next-turn dispatch is kept as the fallback (a step that queues no decode, a decode not released by
 * the batcher), scheduled only when the first check could not dispatch; each schedule dispatches once.
 */
export const dispatchOnceStepQueued = (steps: QueuedSteps): CustomBatchingDispatchSchedule => (dispatch) => {
  let checks = 0
  let dispatched = false
  const check = () => {
    if (dispatched) return
    if (steps.queued() >= steps.released()) {
      dispatched = true
      dispatch()
    } else if (++checks < maxChecks) {
      queueMicrotask(check)
    }
  }
  check()
  if (dispatched) return
  setImmediate(() => {
    if (dispatched) return
    dispatched = true
    dispatch()
  })
}
