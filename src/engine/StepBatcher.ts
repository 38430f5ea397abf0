/** One generation taking part in batched decode steps. */
export interface StepParticipant {
  /** Waits until this step may go out with everyone else's, then issues it; resolves with its result. */
  readonly step: <A>(issue: () => Promise<A>) => Promise<A>
  /** Stops taking part: the others no longer wait for this one. Idempotent. */
  readonly leave: () => void
}

export interface StepBatcherOptions {
  /**
   * How long the waiting steps wait for a generation that is still doing its between-steps work once nothing is
   * being decoded; after that they go without it (it joins the next step).
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
 * work) is waited for at most `maxWaitMs`, counted from the moment no decode is running.
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
    const step = <A>(issue: () => Promise<A>): Promise<A> => {
      if (state === "left") return issue()
      if (state !== "working") return Promise.reject(new Error(`StepBatcher: a step was issued while ${state}`))
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
        this.check()
      }).then(() =>
        issue().finally(() => {
          if (state !== "inflight") return
          state = "working"
          this.inflight -= 1
          this.check()
        })
      )
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

  private releaseAll() {
    if (this.timer !== undefined) {
      clearTimeout(this.timer)
      this.timer = undefined
    }
    const released = this.waiting.splice(0, this.waiting.length)
    for (const entry of released) entry.release()
  }

  private check() {
    if (this.waiting.length === 0) {
      if (this.timer !== undefined) {
        clearTimeout(this.timer)
        this.timer = undefined
      }
      return
    }
    // Steps decoding now come back and join the next release; releasing before would split the batch.
    if (this.inflight > 0) {
      if (this.timer !== undefined) {
        clearTimeout(this.timer)
        this.timer = undefined
      }
      return
    }
    const working = this.live - this.waiting.length
    if (working <= 0) {
      this.releaseAll()
      return
    }
    if (this.timer === undefined) this.timer = setTimeout(() => this.releaseAll(), this.options.maxWaitMs)
  }
}
