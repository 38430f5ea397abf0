import { Effect, Schedule } from "effect"
import { Backend } from "./Backend.js"

/** A slot held by one running request; released (and its KV erased) when the holder's scope closes. */
export interface SlotLease {
  readonly slot: number
  readonly requestId: string
  /** Records how many KV cells the holder's sequence occupies now. */
  readonly setCells: (cells: number) => Effect.Effect<void>
}

/** A point-in-time view of the pool. */
export interface SeqPoolStats {
  readonly total: number
  readonly free: number
  /** Slots whose KV erase kept failing: taken out of service rather than handed out dirty. */
  readonly quarantined: ReadonlyArray<number>
  readonly holders: ReadonlyArray<{ readonly slot: number; readonly requestId: string; readonly cells: number }>
  readonly kvTokens: number
  readonly kvBytes: number
}

interface SlotState {
  holder: string | undefined
  cells: number
  quarantined: boolean
}

const eraseRetries = Schedule.recurs(2)

/**
 * The sequence slots of the one context: a Semaphore bounds how many are held, ids come from a free list,
 * and a lease's finalizer erases the slot's KV cells and returns the id, however its holder ended.
 */
export class SeqPool extends Effect.Service<SeqPool>()("weft/SeqPool", {
  effect: Effect.gen(function*() {
    const backend = yield* Backend
    const total = backend.info.parallel
    const permits = yield* Effect.makeSemaphore(total)
    const freeSlots: Array<number> = Array.from({ length: total }, (_, slot) => total - 1 - slot)
    const slots: Array<SlotState> = Array.from({ length: total }, () => ({ holder: undefined, cells: 0, quarantined: false }))

    const release = (slot: number) =>
      backend.erase(slot).pipe(
        Effect.retry(eraseRetries),
        Effect.matchEffect({
          onSuccess: () =>
            Effect.zipRight(
              Effect.sync(() => {
                slots[slot] = { holder: undefined, cells: 0, quarantined: false }
                freeSlots.push(slot)
              }),
              permits.release(1)
            ),
          onFailure: (error) =>
            Effect.zipRight(
              Effect.sync(() => {
                slots[slot] = { holder: undefined, cells: backend.cells(slot), quarantined: true }
              }),
              Effect.logError("KV erase kept failing; slot taken out of service", error)
            )
        }),
        Effect.withSpan("SeqPool.release", { attributes: { slot } })
      )

    /** Waits for a free slot (interruptibly) and holds it until the caller's scope closes. */
    const acquire = Effect.fn("SeqPool.acquire")(function*(requestId: string) {
      return yield* Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          yield* restore(permits.take(1))
          const slot = freeSlots.pop()
          if (slot === undefined) return yield* Effect.dieMessage("SeqPool: a permit was granted with no free slot")
          slots[slot] = { holder: requestId, cells: 0, quarantined: false }
          yield* Effect.addFinalizer(() => release(slot))
          const lease: SlotLease = {
            slot,
            requestId,
            setCells: (cells) =>
              Effect.sync(() => {
                slots[slot]!.cells = cells
              })
          }
          return lease
        })
      )
    })

    const stats = Effect.sync((): SeqPoolStats => {
      const holders = slots.flatMap((state, slot) =>
        state.holder === undefined ? [] : [{ slot, requestId: state.holder, cells: state.cells }]
      )
      const kvTokens = slots.reduce((sum, state) => sum + state.cells, 0)
      return {
        total,
        free: freeSlots.length,
        quarantined: slots.flatMap((state, slot) => (state.quarantined ? [slot] : [])),
        holders,
        kvTokens,
        kvBytes: kvTokens * backend.info.kvBytesPerToken
      }
    })

    return {
      acquire,
      stats,
      /** Free slots right now, read synchronously so admission can check and enqueue in one step. */
      freeNow: () => freeSlots.length,
      info: backend.info
    } as const
  })
}) {}
