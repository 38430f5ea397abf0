import { HttpServerResponse } from "@effect/platform"
import { Chunk, Deferred, Effect, Exit, Option, Stream } from "effect"
import type { Scope } from "effect"
import type { GeneratedLogprob, GenerationEvent, Usage } from "../scheduler/GenerationRequest.js"
import { GenerationCancelled } from "./HttpErrors.js"
import { errorReply } from "./OpenAiErrors.js"
import type { ApiFailure } from "./OpenAiErrors.js"
import { characterCount, chunkBody, completionBody } from "./OpenAiResponses.js"
import { ToolCallParser } from "../engine/ToolCallParser.js"
import type { ToolCallEvent } from "../engine/ToolCallParser.js"
import type { ToolCallSyntax } from "../engine/ToolCallSyntax.js"
import { randomUUID } from "node:crypto"
import { Readable } from "node:stream"
import type { ChunkPart, OpenAiFinishReason, ResponseMeta } from "./OpenAiResponses.js"

export type Finished = Extract<GenerationEvent, { readonly _tag: "Finished" }>

/** How the engine ends a generation normally; `tool_calls` is decided later, from the output. */
type EngineFinishReason = Exclude<OpenAiFinishReason, "tool_calls">

type Outcome =
  | { readonly _tag: "Done"; readonly reason: EngineFinishReason }
  | { readonly _tag: "Failed"; readonly failure: ApiFailure }

/** How a finished generation is answered: its OpenAI finish reason, or the failure it ended with. */
export const finishedOutcome = (finished: Finished): Outcome => {
  switch (finished.finishReason) {
    case "stop":
    case "length":
      return { _tag: "Done", reason: finished.finishReason }
    case "timeout":
    case "error":
      if (finished.error !== undefined) return { _tag: "Failed", failure: finished.error }
      break
    case "cancelled":
      break
  }
  return { _tag: "Failed", failure: new GenerationCancelled({ shuttingDown: finished.cancelReason === "shutdown" }) }
}

/** `finishedOutcome` as an effect. */
export const outcomeOf = (finished: Finished): Effect.Effect<Outcome> => Effect.succeed(finishedOutcome(finished))

/** OpenAI's id of a tool call. */
export const newCallId = () => `call_${randomUUID().replaceAll("-", "").slice(0, 24)}`

/** A generation that ended normally with tool calls ends for them, unless it was cut at the length limit. */
const withToolCalls = (reason: OpenAiFinishReason, calls: number): OpenAiFinishReason =>
  calls > 0 && reason === "stop" ? "tool_calls" : reason

/** The text and tool calls of a complete output. */
export const splitToolCalls = (syntax: ToolCallSyntax, output: string) => {
  const parser = new ToolCallParser(syntax)
  let text = ""
  const calls: Array<{ id: string; name: string; arguments: string }> = []
  for (const event of [...parser.push(output), ...parser.finish()]) {
    if (event._tag === "Text") text += event.text
    else if (event._tag === "CallStarted") calls.push({ id: newCallId(), name: event.name, arguments: "" })
    else calls[event.index]!.arguments += event.text
  }
  return { text, calls }
}

/** One choice's generation event: `index` is the choice's place in the response. */
export interface ChoiceEvent {
  readonly index: number
  readonly event: GenerationEvent
}

/** The choices' merged events and the response's identity. */
export interface GenerationRun {
  readonly meta: ResponseMeta
  readonly events: Stream.Stream<ChoiceEvent, ApiFailure>
  /** Choices in all, numbered `0 … choices-1`. */
  readonly choices: number
  /** Choices per prompt (`n`): the first of each group counts its prompt in the usage, as OpenAI counts it once. */
  readonly choicesPerPrompt: number
  /** Whether the request asked for logprobs. */
  readonly logprobs: boolean
  /** Set when the output may hold tool calls written in this syntax. */
  readonly toolSyntax?: ToolCallSyntax | undefined
  /**
   * The same events run chunk by chunk without a `Stream`, where the route could read the scheduler's mailbox
   * directly (one plain choice); both kinds of answer use it when set.
   */
  readonly eachChunk?: EachChunk<ChoiceEvent> | undefined
}

/** Runs some events to their end, calling `onChunk` with each chunk in order and waiting for it. */
export type EachChunk<A> = (onChunk: (chunk: Chunk.Chunk<A>) => Effect.Effect<void, ApiFailure>) => Effect.Effect<void, ApiFailure>

/** `events` run chunk by chunk. */
export const eachChunkOf = <A>(events: Stream.Stream<A, ApiFailure>): EachChunk<A> => (onChunk) => Stream.runForEachChunk(events, onChunk)

/** Whether a finished choice ended in a failure, which fails the whole response. */
const failed = (event: GenerationEvent) =>
  event._tag === "Finished" && event.finishReason !== "stop" && event.finishReason !== "length"

/** The events up to and including the first choice's failure: the others end with it (the merge interrupts them). */
const untilFailure = (events: Stream.Stream<ChoiceEvent, ApiFailure>) => Stream.takeUntil(events, ({ event }) => failed(event))

/**
 * Sums the choices' usage: completion tokens of every choice, prompt (and cached) tokens of each prompt's first
 * choice. Used by one stream's fiber, one event at a time.
 */
class UsageTally {
  private promptTokens = 0
  private cachedTokens = 0
  private completionTokens = 0
  finished = 0
  constructor(private readonly choicesPerPrompt: number) {}

  add(index: number, usage: Usage): void {
    this.finished++
    this.completionTokens += usage.completionTokens
    if (index % this.choicesPerPrompt === 0) {
      this.promptTokens += usage.promptTokens
      this.cachedTokens += usage.cachedTokens
    }
  }

  get total(): Usage {
    return { promptTokens: this.promptTokens, completionTokens: this.completionTokens, cachedTokens: this.cachedTokens }
  }
}

interface ChoiceState {
  readonly parts: Array<string>
  readonly logprobs: Array<GeneratedLogprob>
  finished: Finished | undefined
}

/** Runs the choices to their end and answers with one JSON body; a client that disconnects interrupts them. */
export const jsonResponse = (
  run: GenerationRun
): Effect.Effect<HttpServerResponse.HttpServerResponse, ApiFailure> =>
  Effect.gen(function*() {
    const states = Array.from({ length: run.choices }, (): ChoiceState => ({ parts: [], logprobs: [], finished: undefined }))
    yield* (run.eachChunk ?? eachChunkOf(untilFailure(run.events)))((chunk) =>
      Effect.sync(() => {
        for (const { event, index } of chunk) {
          const state = states[index]!
          if (event._tag === "Delta") {
            state.parts.push(event.text)
            if (event.logprobs !== undefined) state.logprobs.push(...event.logprobs)
          } else if (event._tag === "Finished") state.finished = event
        }
      })
    )
    // A failed choice ended the stream before the others finished: its failure is the answer.
    const outcomes = yield* Effect.forEach(states, (state) => state.finished === undefined ? Effect.succeed(undefined) : outcomeOf(state.finished))
    const failure = outcomes.find((outcome) => outcome?._tag === "Failed")
    if (failure?._tag === "Failed") return yield* Effect.fail(failure.failure)
    const tally = new UsageTally(run.choicesPerPrompt)
    const choices = []
    for (const [index, state] of states.entries()) {
      const outcome = outcomes[index]
      if (state.finished === undefined || outcome?._tag !== "Done") {
        return yield* Effect.dieMessage("generation stream ended without a Finished event")
      }
      tally.add(index, state.finished.usage)
      const output = state.parts.join("")
      const logprobs = run.logprobs ? state.logprobs : undefined
      if (run.toolSyntax === undefined) {
        choices.push({ text: output, finishReason: outcome.reason, logprobs })
      } else {
        // Each choice's output is parsed on its own: its tool calls are its own.
        const { calls, text } = splitToolCalls(run.toolSyntax, output)
        choices.push({ text, finishReason: withToolCalls(outcome.reason, calls.length), logprobs, toolCalls: calls })
      }
    }
    return HttpServerResponse.unsafeJson(completionBody(run.meta, choices, tally.total))
  })

const frame = (body: unknown) => `data: ${JSON.stringify(body)}\n\n`

/**
 * Frames the events after a slot was granted. Each delta goes out as it comes, naming its choice; a choice's
 * `finish_reason` follows in a chunk of its own with an empty delta, as OpenAI sends it (holding a delta back to carry
 * it would delay every token by one). Usage and `[DONE]` follow the last choice's end.
 */
const sseFrames = (run: GenerationRun, includeUsage: boolean) => {
  const { meta, toolSyntax } = run
  const chunk = (part: ChunkPart) => frame(chunkBody(meta, part, includeUsage))
  // Written only by this stream's fiber, one event at a time.
  const tally = new UsageTally(run.choicesPerPrompt)
  const sent = Array.from({ length: run.choices }, () => 0)
  // With tools, each choice's text goes through a parser of its own, so tool-call markup turns into that choice's
  // `tool_calls` deltas and never into content.
  const parsers = Array.from({ length: run.choices }, () => toolSyntax === undefined ? undefined : new ToolCallParser(toolSyntax))
  const toolFrames = (index: number, events: ReadonlyArray<ToolCallEvent>) =>
    events.map((event) =>
      chunk(
        event._tag === "Text"
          ? { _tag: "Content", index, text: event.text, finishReason: null }
          : event._tag === "CallStarted"
          ? { _tag: "ToolCallStart", index, call: event.index, id: newCallId(), name: event.name }
          : { _tag: "ToolCallArguments", index, call: event.index, text: event.text }
      )
    )
  return ({ event, index }: ChoiceEvent): ReadonlyArray<string> => {
    const parser = parsers[index]
    switch (event._tag) {
      case "Started":
        return meta.kind === "chat" ? [chunk({ _tag: "Role", index })] : []
      case "Delta": {
        // Logprobs are refused together with tools (see `planOf`), so a parsed choice has none to carry.
        if (parser !== undefined) return event.text === "" ? [] : toolFrames(index, parser.push(event.text))
        if (event.text === "" && (event.logprobs === undefined || event.logprobs.length === 0)) return []
        const offset = sent[index]!
        sent[index] = offset + characterCount(event.text)
        return [chunk({ _tag: "Content", index, text: event.text, finishReason: null, logprobs: event.logprobs, offset })]
      }
      case "Finished": {
        const outcome = finishedOutcome(event)
        if (outcome._tag === "Failed") return [frame({ error: errorReply(outcome.failure).error })]
        tally.add(index, event.usage)
        const rest = parser === undefined ? [] : toolFrames(index, parser.finish())
        const reason = withToolCalls(outcome.reason, parser?.calls ?? 0)
        const frames = [...rest, chunk({ _tag: "Content", index, text: "", finishReason: reason })]
        if (tally.finished < run.choices) return frames
        if (includeUsage) frames.push(chunk({ _tag: "Usage", usage: tally.total }))
        frames.push("data: [DONE]\n\n")
        return frames
      }
    }
  }
}

const utf8 = new TextEncoder()

/** `frames` as one write: nothing for none. */
const encodedFrames = (frames: ReadonlyArray<string>): Uint8Array | undefined =>
  frames.length === 0 ? undefined : utf8.encode(frames.join(""))

/**
 * Answers with Server-Sent Events. Headers go out only once the request holds a slot, so admission failures and
 * queue timeouts still get their own status codes; later failures arrive as an in-band `data: {"error": …}` frame.
 * Each chunk of events goes out as one write; a stage per event (frame, flatten, encode) costs more than the frames.
 * A generation that fails mid-stream is logged by the request log ("request failed", with its error), not here.
 */
export const sseResponse = (run: GenerationRun, includeUsage: boolean) =>
  Effect.suspend(() => {
    const framesOf = sseFrames(run, includeUsage)
    return Effect.map(
      startedBody(
        run.eachChunk ?? eachChunkOf(untilFailure(run.events)),
        ({ event }) => event,
        (events) => encodedFrames(events.flatMap(framesOf)),
        // Another choice may still be refused (its queue place, its prompt) after the first one started.
        (failure) => utf8.encode(frame({ error: errorReply(failure).error }))
      ),
      (body) => HttpServerResponse.raw(body, sseHeaders)
    )
  })

/**
 * Whether a generation's first events hold its `Started`. Fails with its failure when it finished without starting
 * (refused, or timed out in the queue), so the answer keeps that failure's status code.
 */
const hasStarted = (events: ReadonlyArray<GenerationEvent>): Effect.Effect<boolean, ApiFailure> => {
  if (events.some((event) => event._tag === "Started")) return Effect.succeed(true)
  const finished = events.find((event): event is Finished => event._tag === "Finished")
  if (finished === undefined) return Effect.succeed(false)
  return Effect.flatMap(outcomeOf(finished), (outcome) =>
    outcome._tag === "Failed" ? Effect.fail(outcome.failure) : Effect.dieMessage("generation finished without starting"))
}

/**
 * Runs the events (`eachChunk`) on a fiber of the request's scope until the request holds a slot (a `Started` event),
 * failing with the admission or queue failure if it never does, and gives back a body that carries `bytesOf` each
 * chunk of events from the first. Headers go out only after this, so those failures keep their own status codes; a
 * failure after it goes in-band as `failureBytes`.
 *
 * The events are written to a Node `Readable` by the fiber that runs them, rather than handed to the response as a
 * `Stream`: waiting for `Started` takes pulling the stream before the response exists, and a pulled stream turned back
 * into the body cost every token a second channel executor (about a fifth of its Effect steps).
 */
export const startedBody = <A>(
  eachChunk: EachChunk<A>,
  eventOf: (item: A) => GenerationEvent,
  bytesOf: (items: ReadonlyArray<A>) => Uint8Array | undefined,
  failureBytes: (failure: ApiFailure) => Uint8Array
): Effect.Effect<Readable, ApiFailure, Scope.Scope> =>
  Effect.gen(function*() {
    const started = yield* Deferred.make<void, ApiFailure>()
    // Open while the body may take more; closed when it is full until the response reads it again.
    const readable = Effect.unsafeMakeLatch(true)
    const body = new Readable({ read: () => readable.unsafeOpen() })
    body.on("close", () => readable.unsafeOpen())
    const write = (bytes: Uint8Array | undefined): Effect.Effect<void> => {
      if (bytes === undefined || body.destroyed || body.push(bytes)) return Effect.void
      readable.unsafeClose()
      return readable.await
    }
    const head: Array<A> = []
    let open = false
    const written = (chunk: Chunk.Chunk<A>): Effect.Effect<void, ApiFailure> => {
      if (open) return write(bytesOf(Chunk.toReadonlyArray(chunk)))
      for (const item of chunk) head.push(item)
      return Effect.flatMap(hasStarted(head.map(eventOf)), (hasIt) => {
        if (!hasIt) return Effect.void
        open = true
        Deferred.unsafeDone(started, Exit.void)
        return write(bytesOf(head.splice(0)))
      })
    }
    const run = eachChunk(written).pipe(
      Effect.catchAll((failure) => (open ? write(failureBytes(failure)) : Effect.fail(failure))),
      Effect.flatMap(() => (open ? Effect.void : Effect.dieMessage("generation stream ended before it started"))),
      Effect.onExit((exit) =>
        Effect.suspend(() => {
          if (!open) return Deferred.done(started, exit)
          if (Exit.isSuccess(exit)) {
            if (!body.destroyed) body.push(null)
            return Effect.void
          }
          // Cut rather than ended, so the client sees the answer is incomplete.
          body.destroy()
          return Exit.isInterrupted(exit) ? Effect.void : Effect.logError("Generation stream failed after its headers", exit.cause)
        })
      )
    )
    yield* Effect.forkScoped(run)
    yield* Deferred.await(started)
    return body
  })

/** How every event stream is answered. */
export const sseHeaders = {
  contentType: "text/event-stream",
  headers: { "cache-control": "no-cache", "x-accel-buffering": "no" }
} as const

/**
 * Waits until the request holds a slot (a `Started` event), failing with the admission or queue failure if it never
 * does, and gives back all the events from the first. Headers go out only after this, so those failures keep their
 * own status codes.
 */
export const startedEvents = <A>(events: Stream.Stream<A, ApiFailure>, eventOf: (item: A) => GenerationEvent) =>
  Effect.gen(function*() {
    // Pulled in the request's scope, which stays open until the response body is fully written.
    const pull = yield* Stream.toPull(events)
    const head: Array<A> = []
    while (!(yield* hasStarted(head.map(eventOf)))) {
      const next = yield* pull.pipe(
        Effect.map(Option.some),
        Effect.catchAll(Option.match({ onNone: () => Effect.succeed(Option.none()), onSome: (error) => Effect.fail(error) }))
      )
      if (Option.isNone(next)) return yield* Effect.dieMessage("generation stream ended before it started")
      head.push(...Chunk.toReadonlyArray(next.value))
    }
    return Stream.concat(Stream.fromIterable(head), Stream.repeatEffectChunkOption(pull))
  })

/** Runs one generation to its end: its whole text and how it finished, or the failure it ended with. */
export const generatedText = (
  events: Stream.Stream<GenerationEvent, ApiFailure>
): Effect.Effect<{ readonly text: string; readonly finished: Finished; readonly reason: EngineFinishReason }, ApiFailure> =>
  Effect.gen(function*() {
    const { finished, parts } = yield* Stream.runFold(
      events,
      { parts: [] as Array<string>, finished: undefined as Finished | undefined },
      (state, event) => {
        if (event._tag === "Delta") state.parts.push(event.text)
        else if (event._tag === "Finished") state.finished = event
        return state
      }
    )
    if (finished === undefined) return yield* Effect.dieMessage("generation stream ended without a Finished event")
    const outcome = yield* outcomeOf(finished)
    if (outcome._tag === "Failed") return yield* Effect.fail(outcome.failure)
    return { text: parts.join(""), finished, reason: outcome.reason }
  })
