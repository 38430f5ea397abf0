import { Effect, Queue, Ref } from "effect"
import { effectiveTimeouts, withStageLimit } from "./GenerationLoop.js"
import type { StageTimeouts } from "./GenerationRequest.js"
import type { SchedulerSettings } from "./SchedulerConfig.js"
import { QueueFull, ShuttingDown } from "./SchedulerErrors.js"
import type { StageTimedOut } from "./SchedulerErrors.js"

/** Embedding requests of one model that run at once: its embedding context has one sequence. */
export const embeddingConcurrency = 1

/**
 * Admission for embedding requests, with the generation scheduler's limits and errors: at most `maxQueue` wait
 * (`QueueFull` beyond), each waits at most the queue timeout and runs within the total timeout (`StageTimedOut`),
 * none is admitted while draining (`ShuttingDown`). Embeddings take no generation slot: they run on a context of
 * their own beside the generations, `embeddingConcurrency` at a time, in arrival order (a `Queue` of permits:
 * its takers are served first come, first served, which a `Semaphore` does not promise).
 */
export const makeEmbeddingGate = (settings: SchedulerSettings, isDraining: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    const permits = yield* Queue.bounded<void>(embeddingConcurrency)
    yield* permits.offerAll(Array.from({ length: embeddingConcurrency }, () => undefined))
    /** Requests admitted and not yet finished, waiting or running; only `run` changes it, in one step per change. */
    const inFlight = yield* Ref.make(0)

    const admit = Ref.modify(inFlight, (count): [QueueFull | undefined, number] => {
      const queued = Math.max(0, count - embeddingConcurrency)
      return count >= embeddingConcurrency + settings.maxQueue
        ? [new QueueFull({ queued, limit: settings.maxQueue, retryAfterSeconds: 1 }), count]
        : [undefined, count + 1]
    })

    /** Runs `work` once admitted and holding a permit. */
    const run = <A, E, R>(
      work: Effect.Effect<A, E, R>,
      timeouts?: StageTimeouts
    ): Effect.Effect<A, E | QueueFull | ShuttingDown | StageTimedOut, R> =>
      Effect.gen(function*() {
        if (yield* isDraining) return yield* new ShuttingDown()
        const rejected = yield* admit
        if (rejected !== undefined) return yield* rejected
        const limits = effectiveTimeouts(settings.timeouts, timeouts)
        // The wait for a permit must stay interruptible, or its timeout could not end it (an `acquireUseRelease`
        // acquisition is not): an interrupted `take` takes nothing, and one that took a permit gives it back.
        const held = Effect.uninterruptibleMask((restore) =>
          Effect.zipRight(
            restore(withStageLimit(Queue.take(permits), "queue", limits.queueMs)),
            Effect.ensuring(restore(work), Queue.offer(permits, undefined))
          )
        )
        return yield* withStageLimit(held, "total", limits.totalMs).pipe(Effect.ensuring(Ref.update(inFlight, (count) => count - 1)))
      })

    return { run } as const
  })
