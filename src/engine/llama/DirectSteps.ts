import type { Token } from "node-llama-cpp"
import type { NativeContext, NativeSampler, SequenceState } from "./LlamaInternals.js"

/** One sequence's part of a decode step: tokens to evaluate after its current ones, and what to sample after them. */
export interface DirectStep {
  readonly sequence: SequenceState
  readonly tokens: ReadonlyArray<Token>
  /** Samples the next token after the last one; none evaluates only. */
  readonly sample?: { readonly sampler: NativeSampler; readonly probabilities: boolean } | undefined
}

/** A sampled token, with the sampler's candidates' probabilities when they were asked for. */
export interface SampledToken {
  readonly token: Token
  readonly probabilities: Map<Token, number> | undefined
}

export interface DirectStepsOptions {
  /** Most tokens one decode holds (the context's batch size). */
  readonly batchSize: number
  /** KV cells per sequence; a sequence never writes its last one (as node-llama-cpp keeps it free). */
  readonly contextSize: number
  /** Runs a whole step (its decodes and their sampling) exclusively of any other use of the context. */
  readonly exclusive: <A>(use: () => Promise<A>) => Promise<A>
  /**
   * Decode and sample on the JS thread where the native context can (`decodeBatchSync`): small decodes and all
   * sampling then cost no libuv job and no wake-up of the JS thread, which waits for them anyway. Steps then go out a
   * macrotask later (`setImmediate`), so the event loop handles I/O (the tokens' writes, new requests) between them;
   * during one, it handles nothing.
   */
  readonly synchronous?: boolean | undefined
}

/**
 * Most tokens a synchronous step decodes on the JS thread; a bigger decode (a prompt chunk) goes to a libuv thread, so
 * the event loop is never held for longer than a step of single tokens takes.
 */
export const synchronousDecodeMaxTokens = 64

interface Pending {
  readonly step: DirectStep
  readonly resolve: (sampled: SampledToken | undefined) => void
  readonly reject: (error: unknown) => void
}

/**
 * Decode steps issued straight to the native context: the steps queued before the run the first of them schedules (a
 * microtask later) go out as one `llama_decode` (several when they exceed the batch size), in sequence id order, and
 * each sequence's token is sampled on its own sampler as soon as that decode is done. This is what node-llama-cpp's `sequence.evaluate` does per token,
 * without its per-token async generator, evaluation lock, decode queue, prioritization and sampler-config rebuild:
 * about 0.15 ms (12%) of the JS thread's CPU per token at one stream on the 2-core bench machine.
 *
 * Steps queued while one runs go out together once it is done. A failed decode fails every step in it and leaves
 * their sequences as they were.
 *
 * Synchronous (Weft's native build): the JS thread runs each decode of up to `synchronousDecodeMaxTokens` tokens and
 * each sampling itself, as llama-server's loop does, instead of handing them to a libuv thread and sleeping until it
 * wakes it. In stop 33's interleaved runs on the 2-core bench machine that was 4–21% more tokens per second at one
 * stream and 3–20% at 16 ("Synchronous steps (stop 33)" in docs/performance.md).
 */
export class DirectSteps {
  private pending: Array<Pending> = []
  private scheduled = false
  private running = false
  private readonly synchronous: boolean

  constructor(private readonly native: NativeContext, private readonly options: DirectStepsOptions) {
    this.synchronous = options.synchronous === true && native.decodeBatchSync !== undefined &&
      native.sampleTokenSync !== undefined
  }

  /** Whether steps decode and sample on the JS thread (asked for, and the native context can). */
  get isSynchronous(): boolean {
    return this.synchronous
  }

  /** Queues `step` for the next decode; resolves with its sampled token (undefined when it samples none). */
  step(step: DirectStep): Promise<SampledToken | undefined> {
    return new Promise((resolve, reject) => {
      this.pending.push({ step, resolve, reject })
      this.schedule()
    })
  }

  /** Steps queued and not yet decoded (for tests and diagnostics). */
  get queued(): number {
    return this.pending.length
  }

  // A microtask later, so every step released in the same turn (the step batcher releases them in one loop, each
  // queued from a promise reaction) is in; a macrotask later when synchronous, which also lets I/O run first.
  private schedule() {
    if (this.scheduled || this.running) return
    this.scheduled = true
    ;(this.synchronous ? setImmediate : queueMicrotask)(() => {
      this.scheduled = false
      void this.run()
    })
  }

  private async run() {
    if (this.running || this.pending.length === 0) return
    this.running = true
    const taken = this.pending
    this.pending = []
    try {
      await this.options.exclusive(() => this.decodeAll(taken))
    } catch (error) {
      for (const pending of taken) pending.reject(error)
    } finally {
      this.running = false
      if (this.pending.length > 0) this.schedule()
    }
  }

  private async decodeAll(taken: ReadonlyArray<Pending>) {
    const { batchSize, contextSize } = this.options
    const admitted: Array<Pending> = []
    for (const pending of taken) {
      const { sequence, tokens } = pending.step
      if (tokens.length === 0) pending.reject(new Error("nothing to evaluate"))
      else if (tokens.length > batchSize) pending.reject(new Error(`${tokens.length} tokens exceed the batch size of ${batchSize}`))
      else if (sequence.nextTokenIndex + tokens.length > contextSize - 1) {
        pending.reject(new Error(`the sequence is full: ${sequence.nextTokenIndex} + ${tokens.length} tokens exceed ${contextSize - 1} cells`))
      } else admitted.push(pending)
    }
    // By sequence id: llama.cpp splits a batch into micro-batches of consecutive sequence ids, each sequence's tokens
    // evenly, so in id order one micro-batch takes a token of every sequence and the rest of the prompt chunks follow.
    admitted.sort((a, b) => a.step.sequence.sequenceId - b.step.sequence.sequenceId)
    let start = 0
    while (start < admitted.length) {
      let end = start
      let size = 0
      while (end < admitted.length && size + admitted[end]!.step.tokens.length <= batchSize) {
        size += admitted[end]!.step.tokens.length
        end += 1
      }
      await this.decode(admitted.slice(start, end), size)
      start = end
    }
  }

  /** One `llama_decode` of `batch` (`size` tokens), then its sampling; settles every step in it. */
  private async decode(batch: ReadonlyArray<Pending>, size: number) {
    const { native } = this
    const logitIndexes: Array<number> = []
    try {
      native.initBatch(size)
      for (const { step } of batch) {
        const sampled = step.sample === undefined ? noLogits : Uint32Array.of(step.tokens.length - 1)
        const indexes = native.addToBatch(step.sequence.sequenceId, step.sequence.nextTokenIndex, Uint32Array.from(step.tokens), sampled)
        logitIndexes.push(indexes[0] ?? -1)
      }
      if (this.synchronous && size <= synchronousDecodeMaxTokens) native.decodeBatchSync!()
      else await native.decodeBatch()
    } catch (error) {
      for (const pending of batch) pending.reject(error)
      return
    }
    for (const { step } of batch) step.sequence.advance(step.tokens)
    // All of them before the next decode overwrites the logits; each settles as soon as its own token is in.
    await Promise.all(batch.map((pending, index) => this.sample(pending, logitIndexes[index]!)))
  }

  private async sample({ reject, resolve, step }: Pending, logitIndex: number) {
    const { sample } = step
    if (sample === undefined) return resolve(undefined)
    try {
      const result = await this.sampleToken(logitIndex, sample)
      const [token, probabilities] = typeof result === "number" ? [result, undefined] : result
      if (token === -1) return reject(new Error("failed to sample the next token"))
      resolve({ token: token as Token, probabilities: probabilities === undefined ? undefined : tokenValuePairs(probabilities) })
    } catch (error) {
      reject(error)
    }
  }

  /** Samples at `logitIndex` of the last decode, on the JS thread when synchronous. */
  private sampleToken(logitIndex: number, { probabilities, sampler }: NonNullable<DirectStep["sample"]>) {
    const { native } = this
    if (this.synchronous) {
      return probabilities ? native.sampleTokenSync!(logitIndex, sampler, true) : native.sampleTokenSync!(logitIndex, sampler)
    }
    return probabilities ? native.sampleToken(logitIndex, sampler, true) : native.sampleToken(logitIndex, sampler)
  }
}

const noLogits = new Uint32Array(0)

/** node-llama-cpp's flat `[token, value, token, value, ...]` as a map. */
const tokenValuePairs = (flat: ReadonlyArray<number>): Map<Token, number> => {
  const pairs = new Map<Token, number>()
  for (let index = 1; index < flat.length; index += 2) pairs.set(flat[index - 1] as Token, flat[index]!)
  return pairs
}
