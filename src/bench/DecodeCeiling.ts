import { fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Effect, Either, Queue, Schema } from "effect"
import type { Scope } from "effect"
import type { LlamaContext } from "node-llama-cpp"
import { nativeContextOf } from "../engine/llama/LlamaInternals.js"
import { loadBenchModel } from "./BenchModel.js"
import type { EngineBenchConfig } from "./InProcessTarget.js"
import { replyFrom, scopedChild } from "./ScopedChild.js"

/** What `llama_decode` alone sustains at one level through node-llama-cpp: the most a server on its prebuilt binary streams. */
export interface CeilingResult {
  readonly concurrency: number
  readonly round: number
  /** Tokens decoded per second: one per sequence per step, logits computed, nothing sampled. */
  readonly tokensPerSecond: number
  readonly msPerStep: number
}

/** The decode-ceiling process failed a measurement, or is gone. */
export class DecodeCeilingFailed extends Schema.TaggedError<DecodeCeilingFailed>()("DecodeCeilingFailed", {
  message: Schema.String
}) {}

const promptTokens = 16

/** Measures the ceiling at one level; the model stays loaded between levels and rounds. */
export type MeasureCeiling = (
  concurrency: number,
  seconds: number,
  round: number
) => Effect.Effect<CeilingResult, DecodeCeilingFailed>

/** What the parent asks of the ceiling process, one message per level and round. */
export interface CeilingRequest {
  readonly concurrency: number
  readonly seconds: number
  readonly round: number
}

/** What the ceiling process answers. */
export type CeilingReply = { readonly result: CeilingResult } | { readonly error: string }

const workerEntry = fileURLToPath(new URL("./CeilingWorker.ts", import.meta.url))

/**
 * Starts a child process that loads the model once and answers each measurement: decode steps of `concurrency`
 * sequences, one token each, issued straight to the native context for `seconds`: the same binary, model, threads and
 * context shape as the Weft modes, without sampling, JS between steps or anything else. Every mode's tok/s is read
 * against this.
 *
 * A child process, because the result depends on the process: node-llama-cpp runs each decode on one of libuv's
 * threadpool threads, and libuv wakes the idle thread that has waited longest, so with its default 4 threads
 * successive decodes hop from thread to thread, each meeting a ggml helper thread started anew for that decode at a
 * spinning barrier. On the 2-core machine a one-token decode then takes 15.1 instead of 8.7 ms (`perf stat`: 545
 * instead of 51 CPU migrations). The ceiling is the most `llama_decode` can do, so it runs where libuv has a single
 * thread; libuv reads `UV_THREADPOOL_SIZE` once, at its first use, before any of our code runs, so it cannot be
 * changed inside the bench's own process.
 */
export const makeDecodeCeiling = (config: EngineBenchConfig): Effect.Effect<MeasureCeiling, never, Scope.Scope> =>
  Effect.gen(function*() {
    const ceiling = yield* scopedChild(
      () =>
        fork(workerEntry, [JSON.stringify(config)], {
          env: { ...process.env, UV_THREADPOOL_SIZE: "1" },
          // The worker is TypeScript, run through tsx whatever started this process (tsx, weft's bin, vitest).
          execArgv: ["--import", "tsx"],
          stdio: ["ignore", "pipe", "pipe", "ipc"]
        }),
      2000
    )
    const ask = (request: CeilingRequest) =>
      replyFrom(ceiling, {
        name: "decode-ceiling",
        accept: (reply) => reply as CeilingReply,
        failed: (message) => new DecodeCeilingFailed({ message }),
        request
      }).pipe(
        Effect.flatMap((reply) => "result" in reply ? Effect.succeed(reply.result) : new DecodeCeilingFailed({ message: reply.error }))
      )
    return (concurrency, seconds, round) => ask({ concurrency, seconds, round })
  })

/** Loads the model once and measures each level on request, in the process it runs in. */
export const serveCeiling = (
  config: EngineBenchConfig,
  requests: Queue.Dequeue<CeilingRequest>,
  reply: (reply: CeilingReply) => void
): Effect.Effect<never, Error, Scope.Scope> =>
  Effect.gen(function*() {
    const { model } = yield* loadBenchModel({ modelPath: config.modelPath, gpu: config.gpu, maxThreads: config.threads })
    const measure = (request: CeilingRequest) =>
      Effect.scoped(Effect.gen(function*() {
        const context: LlamaContext = yield* Effect.acquireRelease(
          Effect.tryPromise(() =>
            model.createContext({
              // Weft's shape: `parallel` sequences, of which `concurrency` decode.
              sequences: Math.max(config.parallel, request.concurrency),
              contextSize: config.contextSize,
              threads: config.threads,
              batchSize: config.batchSize ?? Math.min(512, config.contextSize * config.parallel),
              flashAttention: config.flashAttention
            })
          ),
          (context) => Effect.promise(() => context.dispose())
        )
        return yield* Effect.tryPromise(() =>
          decodeSteps(context, config.contextSize, request.concurrency, request.seconds, request.round)
        )
      }))
    return yield* Queue.take(requests).pipe(
      Effect.flatMap((request) => Effect.either(measure(request))),
      Effect.flatMap((outcome) =>
        Effect.sync(() => reply(Either.isRight(outcome) ? { result: outcome.right } : { error: String(outcome.left) }))
      ),
      Effect.forever
    )
  })

export const decodeSteps = async (
  context: LlamaContext,
  contextSize: number,
  concurrency: number,
  seconds: number,
  round: number
): Promise<CeilingResult> => {
  for (let sequence = 0; sequence < concurrency; sequence++) context.getSequence()
  const native = nativeContextOf(context)
  const token = (step: number) => 300 + (step % 1000)
  native.initBatch(promptTokens * concurrency)
  for (let sequence = 0; sequence < concurrency; sequence++) {
    const prompt = Uint32Array.from({ length: promptTokens }, (_, index) => token(index + sequence))
    native.addToBatch(sequence, 0, prompt, Uint32Array.from([promptTokens - 1]))
  }
  await native.decodeBatch()
  let position = promptTokens
  let steps = 0
  const started = performance.now()
  const deadline = started + seconds * 1000
  // Bounded by the context: positions past it would fail.
  while (performance.now() < deadline && position < contextSize - 1) {
    native.initBatch(concurrency)
    for (let sequence = 0; sequence < concurrency; sequence++) {
      native.addToBatch(sequence, position, Uint32Array.from([token(position + sequence)]), Uint32Array.from([0]))
    }
    await native.decodeBatch()
    position += 1
    steps += 1
  }
  const elapsed = performance.now() - started
  return { concurrency, round, tokensPerSecond: (steps * concurrency * 1000) / elapsed, msPerStep: elapsed / steps }
}
