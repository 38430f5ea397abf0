/** One generation taking part in batched decode steps. */
export interface StepParticipant {
  /**
   * Waits until this step may go out with everyone else's, then issues it; resolves with its result. An `eager` step
   * goes out at once (the others then wait for it to come back before their next step).
   */
  readonly step: <A>(issue: () => Promise<A>, options?: { readonly eager?: boolean }) => Promise<A>
  /** Stops taking part: the others no longer wait for this one. Idempotent. */
  readonly leave: () => void
}

export interface StepBatcherOptions {
  /**
   * How long the waiting steps wait, once nothing is being decoded and no other generation has arrived meanwhile,
   * for a generation still doing its between-steps work; after that they go without it (it joins the next step).
   */
  readonly maxWaitMs: number
}

type State = "working" | "waiting" | "inflight" | "left"

/**
 * Lines up the decode steps of all live generations so they reach node-llama-cpp in the same event-loop turn and so
 * go out as ONE batch. Left alone, each generation queues its next token as soon as its own previous one is sampled
 * and handled; node-llama-cpp then dispatches whatever is queued on the next cycle, so concurrent streams drift apart
 * and one step of N streams becomes several `llama_decode` calls of a few tokens, each a full pass over the weights.
 *
 * A step is released when every live generation is waiting for it. A generation still between steps (doing its JS
 * work) is waited for until no other generation has arrived for `maxWaitMs` while no decode is running.
 */
export class StepBatcher {
  private live = 0
  private inflight = 0
  private readonly waiting: Array<{ readonly release: () => void }> = []
  private timer: ReturnType<typeof setTimeout> | undefined

  constructor(private readonly options: StepBatcherOptions) {}

  /** Adds a live generation; it is waited for until it leaves. */
  join(): StepParticipant {
    this.live += 1
    let state: State = "working"
    let entry: { readonly release: () => void } | undefined
    const finished = () => {
      if (state !== "inflight") return
      state = "working"
      this.inflight -= 1
      this.check()
    }
    const step = <A>(issue: () => Promise<A>, options?: { readonly eager?: boolean }): Promise<A> => {
      if (state === "left") return issue()
      if (state !== "working") return Promise.reject(new Error(`StepBatcher: a step was issued while ${state}`))
      if (options?.eager === true) {
        state = "inflight"
        this.inflight += 1
        this.clearTimer()
        return issue().finally(finished)
      }
      return new Promise<void>((resolve) => {
        state = "waiting"
        entry = {
          release: () => {
            entry = undefined
            if (state === "waiting") {
              state = "inflight"
              this.inflight += 1
            }
            resolve()
          }
        }
        this.waiting.push(entry)
        // Each arrival restarts the straggler timeout: while generations keep arriving, the JS thread is still
        // working through them (one at a time), and cutting the batch short would split it.
        this.clearTimer()
        this.check()
      }).then(() => issue().finally(finished))
    }
    const leave = () => {
      if (state === "left") return
      if (state === "inflight") this.inflight -= 1
      const waitingEntry = state === "waiting" ? entry : undefined
      state = "left"
      this.live -= 1
      if (waitingEntry !== undefined) {
        // Its step still runs, just no longer in step with the others.
        this.waiting.splice(this.waiting.indexOf(waitingEntry), 1)
        waitingEntry.release()
      }
      this.check()
    }
    return { step, leave }
  }

  /** Live generations, waiting steps and steps being decoded (for tests and diagnostics). */
  stats(): { readonly live: number; readonly waiting: number; readonly inflight: number } {
    return { live: this.live, waiting: this.waiting.length, inflight: this.inflight }
  }

  private clearTimer() {
    if (this.timer !== undefined) {
      clearTimeout(this.timer)
      this.timer = undefined
    }
  }

  private releaseAll() {
    this.clearTimer()
    const released = this.waiting.splice(0, this.waiting.length)
    for (const entry of released) entry.release()
  }

  private check() {
    // Steps being decoded come back and join the next release; releasing before would split the batch.
    if (this.waiting.length === 0 || this.inflight > 0) {
      this.clearTimer()
      return
    }
    if (this.live - this.waiting.length <= 0) {
      this.releaseAll()
      return
    }
    if (this.timer === undefined) this.timer = setTimeout(() => this.releaseAll(), this.options.maxWaitMs)
  }
}
