import { Cause, Effect } from "effect"
import type { RequestSample } from "./LevelResult.js"

/** One generation the load generator asks a target for: a fixed prompt, a fixed number of tokens (EOS ignored). */
export interface GenerationCall {
  readonly index: number
  readonly prompt: string
  readonly maxTokens: number
  readonly seed: number
  readonly temperature: number
  /** Called as each text chunk arrives, for scenarios that act on progress. */
  readonly onChunk?: ((at: number) => void) | undefined
}

/** Something the bench measures: a server over HTTP, the scheduler in-process, or node-llama-cpp used naively. */
export interface BenchTarget {
  /** Mode name shown in the tables: `naive`, `in-process`, `weft-http`, or a URL. */
  readonly name: string
  /** Readies the target for `concurrency` simultaneous streams (the naive mode sizes its context to it). */
  readonly prepare: (concurrency: number) => Effect.Effect<void>
  /** Processes besides this one that serve the target (a spawned server), whose CPU is the bench's own. */
  readonly pids: ReadonlyArray<number>
  /** Runs one generation; failures are recorded in the sample, never raised. */
  readonly send: (call: GenerationCall) => Effect.Effect<RequestSample>
}

/** An already-failed sample, for a request that could not even start. */
export const failedSample = (error: string, startedAt: number = performance.now()): RequestSample => ({
  ok: false,
  error,
  startedAt,
  endedAt: performance.now(),
  chunkTimes: [],
  completionTokens: 0
})

/** Runs `effect` and turns any failure or defect into a failed sample. */
export const sampleOrFailure = <E>(effect: Effect.Effect<RequestSample, E>): Effect.Effect<RequestSample> => {
  const startedAt = performance.now()
  return effect.pipe(
    Effect.catchAllCause((cause) =>
      Effect.succeed(failedSample(Cause.pretty(cause).split("\n")[0] ?? "failed", startedAt))
    )
  )
}
