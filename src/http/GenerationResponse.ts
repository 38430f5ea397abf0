import { HttpServerResponse } from "@effect/platform"
import { Chunk, Effect, Option, Stream } from "effect"
import type { GenerationEvent } from "../scheduler/GenerationRequest.js"
import { GenerationCancelled } from "./HttpErrors.js"
import { errorReply } from "./OpenAiErrors.js"
import type { ApiFailure } from "./OpenAiErrors.js"
import { chunkBody, completionBody } from "./OpenAiResponses.js"
import type { ChunkPart, OpenAiFinishReason, ResponseMeta } from "./OpenAiResponses.js"

export type Finished = Extract<GenerationEvent, { readonly _tag: "Finished" }>

type Outcome =
  | { readonly _tag: "Done"; readonly reason: OpenAiFinishReason }
  | { readonly _tag: "Failed"; readonly failure: ApiFailure }

/** How a finished generation is answered: its OpenAI finish reason, or the failure it ended with. */
export const outcomeOf = (finished: Finished): Effect.Effect<Outcome> => {
  switch (finished.finishReason) {
    case "stop":
    case "length":
      return Effect.succeed({ _tag: "Done", reason: finished.finishReason })
    case "timeout":
    case "error":
      if (finished.error !== undefined) return Effect.succeed({ _tag: "Failed", failure: finished.error })
      break
    case "cancelled":
      break
  }
  return Effect.succeed({
    _tag: "Failed",
    failure: new GenerationCancelled({ shuttingDown: finished.cancelReason === "shutdown" })
  })
}

/** The generation's events and the response's identity. */
export interface GenerationRun {
  readonly meta: ResponseMeta
  readonly events: Stream.Stream<GenerationEvent, ApiFailure>
}

/** Runs the generation to its end: its whole text and how it finished, or the failure it ended with. */
export const generatedText = (
  events: Stream.Stream<GenerationEvent, ApiFailure>
): Effect.Effect<{ readonly text: string; readonly finished: Finished; readonly reason: OpenAiFinishReason }, ApiFailure> =>
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

/** Runs the generation to its end and answers with one JSON body; a client that disconnects interrupts the run. */
export const jsonResponse = (
  { events, meta }: GenerationRun
): Effect.Effect<HttpServerResponse.HttpServerResponse, ApiFailure> =>
  Effect.map(generatedText(events), ({ finished, reason, text }) =>
    HttpServerResponse.unsafeJson(completionBody(meta, text, reason, finished.usage)))

const frame = (body: unknown) => `data: ${JSON.stringify(body)}\n\n`

/**
 * Frames the events after the slot was granted. Each delta goes out as it comes; `finish_reason` follows in a chunk of
 * its own with an empty delta, as OpenAI sends it (holding a delta back to carry it would delay every token by one).
 */
const sseFrames = ({ meta }: GenerationRun, includeUsage: boolean) => {
  const chunk = (part: ChunkPart) => frame(chunkBody(meta, part, includeUsage))
  return (event: GenerationEvent): Effect.Effect<ReadonlyArray<string>> => {
    switch (event._tag) {
      case "Started":
        return Effect.succeed(meta.kind === "chat" ? [chunk({ _tag: "Role" })] : [])
      case "Delta":
        return Effect.succeed(event.text === "" ? [] : [chunk({ _tag: "Content", text: event.text, finishReason: null })])
      case "Finished":
        return Effect.flatMap(outcomeOf(event), (outcome) => {
          if (outcome._tag === "Done") {
            const frames = [chunk({ _tag: "Content", text: "", finishReason: outcome.reason })]
            if (includeUsage) frames.push(chunk({ _tag: "Usage", usage: event.usage }))
            frames.push("data: [DONE]\n\n")
            return Effect.succeed(frames)
          }
          const frames = [frame({ error: errorReply(outcome.failure).error })]
          const log = outcome.failure._tag === "DecodeFailed"
            ? Effect.logError("Generation failed mid-stream", outcome.failure)
            : Effect.void
          return Effect.as(log, frames)
        })
    }
  }
}

/**
 * Answers with Server-Sent Events. Headers go out only once the request holds a slot, so admission failures and
 * queue timeouts still get their own status codes; later failures arrive as an in-band `data: {"error": …}` frame.
 */
export const sseResponse = (run: GenerationRun, includeUsage: boolean) =>
  Effect.map(startedEvents(run.events), (events) =>
    HttpServerResponse.stream(
      events.pipe(Stream.mapEffect(sseFrames(run, includeUsage)), Stream.flattenIterables, Stream.encodeText),
      sseHeaders
    ))

/** How every event stream is answered. */
export const sseHeaders = {
  contentType: "text/event-stream",
  headers: { "cache-control": "no-cache", "x-accel-buffering": "no" }
} as const

/**
 * Waits until the request holds a slot (its `Started` event), failing with the admission or queue failure if it never
 * does, and gives back all its events from the first. Headers go out only after this, so those failures keep their
 * own status codes.
 */
export const startedEvents = (events: Stream.Stream<GenerationEvent, ApiFailure>) =>
  Effect.gen(function*() {
    // Pulled in the request's scope, which stays open until the response body is fully written.
    const pull = yield* Stream.toPull(events)
    const head: Array<GenerationEvent> = []
    while (!head.some((event) => event._tag === "Started")) {
      const next = yield* pull.pipe(
        Effect.map(Option.some),
        Effect.catchAll(Option.match({ onNone: () => Effect.succeed(Option.none()), onSome: (error) => Effect.fail(error) }))
      )
      if (Option.isNone(next)) return yield* Effect.dieMessage("generation stream ended before it started")
      head.push(...Chunk.toReadonlyArray(next.value))
      const finished = head.find((event): event is Finished => event._tag === "Finished")
      if (finished !== undefined && !head.some((event) => event._tag === "Started")) {
        const outcome = yield* outcomeOf(finished)
        return yield* outcome._tag === "Failed"
          ? Effect.fail(outcome.failure)
          : Effect.dieMessage("generation finished without starting")
      }
    }
    const rest = Stream.repeatEffectChunkOption(
      pull.pipe(Effect.catchAll(Option.match({ onNone: () => Effect.fail(Option.none()), onSome: (error) => Effect.die(error) })))
    )
    return Stream.concat(Stream.fromIterable(head), rest)
  })
