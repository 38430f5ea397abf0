import { Clock, Deferred, Duration, Effect, Option } from "effect"
import type { Mailbox, Scope } from "effect"
import type { BackendShape, DecodeFailed, StepLogprobs, StepResult } from "../engine/Backend.js"
import type { SeqPool, SlotLease } from "../engine/SeqPool.js"
import { TextAssembler } from "../engine/TextAssembler.js"
import { GenerationEvent } from "./GenerationRequest.js"
import type { FinishReason, GeneratedLogprob, GenerationRequest, StageTimeouts } from "./GenerationRequest.js"
import type { Outcome } from "./RequestOutcome.js"
import type { RequestRegistry } from "./RequestRegistry.js"
import { StageTimedOut } from "./SchedulerErrors.js"

/**
 * A request's progress, written only by its own generation fiber; read when that fiber ends, however it ends, and by
 * the scheduler's `inspect` meanwhile.
 */
export interface Progress {
  completionTokens: number
  /** Prompt tokens whose KV was reused from the prefix cache. */
  cachedTokens: number
}

/** The stricter of the server's and the request's limit for each stage. */
export const effectiveTimeouts = (server: StageTimeouts, request: StageTimeouts | undefined): StageTimeouts => {
  const pick = (serverLimit: number | undefined, requestLimit: number | undefined) =>
    serverLimit === undefined ? requestLimit : requestLimit === undefined ? serverLimit : Math.min(serverLimit, requestLimit)
  return {
    queueMs: pick(server.queueMs, request?.queueMs),
    firstTokenMs: pick(server.firstTokenMs, request?.firstTokenMs),
    totalMs: pick(server.totalMs, request?.totalMs)
  }
}

/** Fails `effect` with `StageTimedOut` for `stage` once it outlives `limitMs`; no limit when undefined. */
export const withStageLimit = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  stage: StageTimedOut["stage"],
  limitMs: number | undefined
): Effect.Effect<A, E | StageTimedOut, R> =>
  limitMs === undefined
    ? effect
    : Effect.timeoutFail(effect, { duration: Duration.millis(limitMs), onTimeout: () => new StageTimedOut({ stage, limitMs }) })

/** What one request's generation needs from the scheduler around it. */
export interface GenerationContext {
  readonly backend: BackendShape
  readonly pool: SeqPool
  readonly registry: RequestRegistry
  /** Gives up the request's turn or place in the queue once it has a slot, or has given up waiting for one. */
  readonly leaveQueue: (id: string) => Effect.Effect<void>
}

/** `consume`'s answers when a token does not end the generation, and when the stop text does. */
const continueGenerating = Effect.succeed(undefined)
const stoppedByText = Effect.succeed<Outcome>({ finishReason: "stop" })

/** One request's run: waits for its turn and a slot, then decodes until a stop, a limit or the end of the context. */
export const runGeneration = (
  { backend, leaveQueue, pool, registry }: GenerationContext,
  request: GenerationRequest,
  seed: number,
  limits: StageTimeouts,
  turn: Deferred.Deferred<void>,
  mailbox: Mailbox.Mailbox<GenerationEvent>,
  progress: Progress
): Effect.Effect<Outcome, StageTimedOut | DecodeFailed, Scope.Scope> =>
  Effect.gen(function*() {
    const lease = yield* withStageLimit(
      Effect.zipRight(
        Deferred.await(turn).pipe(Effect.withSpan("RequestScheduler.queueWait")),
        pool.acquire(request.id, { prompt: request.prompt, cacheKey: request.cacheKey, sessionId: request.sessionId })
      ).pipe(
        Effect.ensuring(leaveQueue(request.id))
      ),
      "queue",
      limits.queueMs
    )
    progress.cachedTokens = lease.reusedTokens
    const running = yield* registry.moveTo(request.id, "Running", (now) => ({ startedAt: now, slot: lease.slot, cachedTokens: lease.reusedTokens }))
    yield* mailbox.offer(
      GenerationEvent.Started({
        requestId: request.id,
        slot: lease.slot,
        seed,
        promptTokens: request.prompt.length,
        cachedTokens: lease.reusedTokens
      })
    )

    const waitedFrom = yield* Clock.currentTimeMillis
    const { prefilled, reused } = yield* withStageLimit(sharedPrompt(backend, request, lease), "firstToken", limits.firstTokenMs)
    if (reused !== lease.reusedTokens) {
      progress.cachedTokens = reused
      lease.setCells(reused)
      yield* registry.patch(request.id, () => ({ cachedTokens: reused }))
    }
    // Waiting for a shared prompt counts towards the first token.
    const firstTokenMs = limits.firstTokenMs === undefined
      ? undefined
      : Math.max(1, limits.firstTokenMs - ((yield* Clock.currentTimeMillis) - waitedFrom))
    const suffix = request.prompt.slice(reused)
    const generation = yield* backend.start(lease.slot, suffix, { ...request.sampling, seed })
    const assembler = new TextAssembler(backend.detokenize, request.stop ?? [], request.prompt.slice(-4))
    const contextSize = backend.info.contextSize
    let unreportedTokens = 0
    let cells = 0
    const logprobs = request.sampling.logprobs === undefined ? undefined : new LogprobRenderer(backend.detokenize, request.prompt)

    const clock = yield* Effect.clock

    /**
     * Sends `text` with the tokens (and their logprobs) taken in since the last delta; `last` sends even no text.
     * The mailbox is unbounded, so the offer never waits (or fails: it ends only after the generation).
     */
    const emit = (text: string, last = false): void => {
      if (text.length === 0 && !(last && logprobs?.hasPending === true)) return
      const tokens = unreportedTokens
      unreportedTokens = 0
      mailbox.unsafeOffer(GenerationEvent.Delta({ text, tokens, logprobs: logprobs?.take() }))
    }
    const finishWithRest = (finishReason: FinishReason) =>
      Effect.sync((): Outcome => {
        const rest = assembler.finish()
        emit(rest.text, true)
        return { finishReason: rest.stopped ? "stop" : finishReason }
      })

    const firstStep = withStageLimit(generation.next, "firstToken", firstTokenMs).pipe(
      Effect.tap(() => prefilled),
      Effect.tap(() =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.zipRight(
            registry.patch(request.id, () => ({ firstTokenAt: now })),
            registry.publish({ _tag: "FirstToken", requestId: request.id, at: now })
          )
        )
      ),
      Effect.withSpan("RequestScheduler.prefill", { attributes: { "weft.prompt_tokens": suffix.length } })
    )

    const atLimit = () => request.maxTokens !== undefined && progress.completionTokens >= request.maxTokens

    /**
     * Takes in one step's result; an outcome when it ends the generation. Runs for every token, so it does its work
     * synchronously, in one step of the fiber.
     */
    const consume = (step: StepResult): Effect.Effect<Outcome | undefined> => {
      cells = step.cells
      lease.setCells(cells)
      if (step._tag === "EndOfGeneration") return finishWithRest("stop")
      progress.completionTokens += 1
      unreportedTokens += 1
      registry.tokenGenerated({ record: running, at: clock.unsafeCurrentTimeMillis(), token: step.token })
      logprobs?.add(step.token, step.logprobs)
      const out = assembler.push(step.token)
      emit(out.text)
      if (!out.stopped) return continueGenerating
      emit("", true)
      return stoppedByText
    }

    if (atLimit()) return yield* finishWithRest("length")
    const firstOutcome = yield* Effect.flatMap(firstStep, consume)
    if (firstOutcome !== undefined) return firstOutcome
    return yield* Effect.gen(function*() {
      while (true) {
        if (atLimit()) return yield* finishWithRest("length")
        // Each later step writes one more cell; a full context ends the generation instead of shifting it.
        if (cells + 1 > contextSize) return yield* finishWithRest("length")
        const outcome = yield* Effect.flatMap(generation.next, consume)
        if (outcome !== undefined) return outcome
      }
    }).pipe(Effect.withSpan("RequestScheduler.decode"))
  })

/**
 * How much of the prompt `lease`'s slot holds before the generation starts, and what to do once the prompt is in.
 * Without a `promptShare` that is the prefix the pool reused. With one, the leader tells the other choices when its
 * prompt is evaluated; a follower waits for that and copies all but the prompt's last token from the leader's slot (the
 * last one is evaluated on its own slot, for its own first token), unless its own slot already holds that much.
 */
const sharedPrompt = (
  backend: BackendShape,
  request: GenerationRequest,
  lease: SlotLease
): Effect.Effect<{ readonly reused: number; readonly prefilled: Effect.Effect<void> }, DecodeFailed, Scope.Scope> =>
  Effect.gen(function*() {
    const unshared = { reused: lease.reusedTokens, prefilled: Effect.void }
    if (request.promptShare === undefined) return unshared
    const role = yield* request.promptShare.join(lease.slot)
    if (role._tag === "Lead") return { ...unshared, prefilled: role.prefilled }
    const length = request.prompt.length - 1
    if (lease.reusedTokens >= length) return unshared
    const copied = yield* request.promptShare.copyFromLeader((from) => backend.copyPrefix(from, lease.slot, length))
    // No copy (the leader let its slot go first) leaves the slot as it was; a failed one leaves it empty.
    return Option.match(copied, {
      onNone: () => unshared,
      onSome: (done) => ({ ...unshared, reused: done ? length : 0 })
    })
  })

/** Renders each generated token's logprobs as text, in the context of the tokens before it; held until emitted. */
class LogprobRenderer {
  private pending: Array<GeneratedLogprob> = []
  private readonly context: Array<number>

  constructor(private readonly detokenize: BackendShape["detokenize"], prompt: ReadonlyArray<number>) {
    this.context = prompt.slice(-4)
  }

  get hasPending(): boolean {
    return this.pending.length > 0
  }

  add(token: number, step: StepLogprobs | undefined): void {
    const context = this.context.slice()
    const text = (candidate: number) => this.detokenize([candidate], context)
    if (step !== undefined) {
      this.pending.push({
        text: text(token),
        logprob: step.logprob,
        top: step.top.map((top) => ({ text: text(top.token), logprob: top.logprob }))
      })
    }
    this.context.push(token)
    if (this.context.length > 4) this.context.shift()
  }

  take(): ReadonlyArray<GeneratedLogprob> {
    const taken = this.pending
    this.pending = []
    return taken
  }
}
