import { Effect } from "effect"
import type { Scope } from "effect"
import type { StepBatcher, StepParticipant } from "../StepBatcher.js"

/** Slots readied for a new generation whose places in the decode steps are held until `start` claims them. */
export interface SlotArrivals {
  /** `slot` takes part in the decode steps from now on (replacing an earlier arrival on it). */
  readonly arrive: (slot: number) => StepParticipant
  /** `participant` leaves after `graceMs` unless `claim` took it meanwhile. */
  readonly expire: (slot: number, participant: StepParticipant) => Effect.Effect<void>
  /** The arrival on `slot`, now owned by its generation; a fresh participant where none is waiting. */
  readonly claim: (slot: number) => StepParticipant
}

/**
 * A request handed a slot takes part in the decode steps from the trim on, not only once it starts: the trim waits for
 * the step in flight (KV edits take node-llama-cpp's context lock), and were the running generations' next step
 * released meanwhile, the new prompt would wait for that whole step too before its prefill. `graceMs` bounds how long
 * a request that never starts holds its place. The expiry fibers live in the current scope (the backend's).
 */
export const makeSlotArrivals = (
  batcher: Pick<StepBatcher, "join">,
  graceMs: number
): Effect.Effect<SlotArrivals, never, Scope.Scope> =>
  Effect.map(Effect.scope, (scope) => {
    // At most one arrival per slot. Only these three functions touch the map, each synchronously (nothing yields
    // between its read and its write), so an expiry never removes an arrival that replaced the one it was for.
    const arriving = new Map<number, StepParticipant>()
    const arrive = (slot: number): StepParticipant => {
      arriving.get(slot)?.leave()
      const participant = batcher.join()
      arriving.set(slot, participant)
      return participant
    }
    const expire = (slot: number, participant: StepParticipant) =>
      Effect.sleep(graceMs).pipe(
        Effect.andThen(() => {
          if (arriving.get(slot) !== participant) return
          arriving.delete(slot)
          participant.leave()
        }),
        // `trim` lets the arrival go from its release, an uninterruptible region the fork would inherit.
        Effect.interruptible,
        Effect.forkIn(scope),
        Effect.asVoid
      )
    const claim = (slot: number): StepParticipant => {
      const participant = arriving.get(slot)
      arriving.delete(slot)
      return participant ?? batcher.join()
    }
    return { arrive, expire, claim }
  })
