import { HttpServerResponse } from "@effect/platform"
import { Chunk, Effect, Option, Stream } from "effect"
import type { GenerationEvent } from "../scheduler/GenerationRequest.js"
import { GenerationCancelled } from "./HttpErrors.js"
import { errorReply } from "./OpenAiErrors.js"
import type { ApiFailure } from "./OpenAiErrors.js"
import { chunkBody, completionBody } from "./OpenAiResponses.js"
import { ToolCallParser } from "../engine/ToolCallParser.js"
import type { ToolCallEvent } from "../engine/ToolCallParser.js"
import type { ToolCallSyntax } from "../engine/ToolCallSyntax.js"
import { randomUUID } from "node:crypto"
import type { ChunkPart, OpenAiFinishReason, ResponseMeta } from "./OpenAiResponses.js"

type Finished = Extract<GenerationEvent, { readonly _tag: "Finished" }>

type Outcome =
  | { readonly _tag: "Done"; readonly reason: OpenAiFinishReason }
  | { readonly _tag: "Failed"; readonly failure: ApiFailure }

/** How a finished generation is answered: its OpenAI finish reason, or the failure it ended with. */
const outcomeOf = (finished: Finished): Effect.Effect<Outcome> => {
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
  /** Set when the output may hold tool calls written in this syntax. */
  readonly toolSyntax?: ToolCallSyntax | undefined
}

/** OpenAI's id of a tool call. */
const newCallId = () => `call_${randomUUID().replaceAll("-", "").slice(0, 24)}`

/** A generation that ended normally with tool calls ends for them, unless it was cut at the length limit. */
const withToolCalls = (reason: OpenAiFinishReason, calls: number): OpenAiFinishReason =>
  calls > 0 && reason === "stop" ? "tool_calls" : reason

/** The text and tool calls of a complete output. */
const splitToolCalls = (syntax: ToolCallSyntax, output: string) => {
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

/** Runs the generation to its end and answers with one JSON body; a client that disconnects interrupts the run. */
export const jsonResponse = (
  { events, meta, toolSyntax }: GenerationRun
): Effect.Effect<HttpServerResponse.HttpServerResponse, ApiFailure> =>
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
    const output = parts.join("")
    if (toolSyntax === undefined) return HttpServerResponse.unsafeJson(completionBody(meta, output, outcome.reason, finished.usage))
    const { calls, text } = splitToolCalls(toolSyntax, output)
    return HttpServerResponse.unsafeJson(completionBody(meta, text, withToolCalls(outcome.reason, calls.length), finished.usage, calls))
  })

const frame = (body: unknown) => `data: ${JSON.stringify(body)}\n\n`

/**
 * Frames the events after the slot was granted. Each delta goes out as it comes; `finish_reason` follows in a chunk of
 * its own with an empty delta, as OpenAI sends it (holding a delta back to carry it would delay every token by one).
 */
const sseFrames = ({ meta, toolSyntax }: GenerationRun, includeUsage: boolean) => {
  const chunk = (part: ChunkPart) => frame(chunkBody(meta, part, includeUsage))
  // With tools, text goes through the parser, so tool-call markup turns into `tool_calls` deltas and never into content.
  const parser = toolSyntax === undefined ? undefined : new ToolCallParser(toolSyntax)
  const toolFrames = (events: ReadonlyArray<ToolCallEvent>) =>
    events.map((event) =>
      chunk(
        event._tag === "Text"
          ? { _tag: "Content", text: event.text, finishReason: null }
          : event._tag === "CallStarted"
          ? { _tag: "ToolCallStart", index: event.index, id: newCallId(), name: event.name }
          : { _tag: "ToolCallArguments", index: event.index, text: event.text }
      )
    )
  return (event: GenerationEvent): Effect.Effect<ReadonlyArray<string>> => {
    switch (event._tag) {
      case "Started":
        return Effect.succeed(meta.kind === "chat" ? [chunk({ _tag: "Role" })] : [])
      case "Delta":
        if (event.text === "") return Effect.succeed([])
        return Effect.succeed(
          parser === undefined ? [chunk({ _tag: "Content", text: event.text, finishReason: null })] : toolFrames(parser.push(event.text))
        )
      case "Finished":
        return Effect.flatMap(outcomeOf(event), (outcome) => {
          if (outcome._tag === "Done") {
            const rest = parser === undefined ? [] : toolFrames(parser.finish())
            const reason = withToolCalls(outcome.reason, parser?.calls ?? 0)
            const frames = [...rest, chunk({ _tag: "Content", text: "", finishReason: reason })]
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
  Effect.gen(function*() {
    // Pulled in the request's scope, which stays open until the response body is fully written.
    const pull = yield* Stream.toPull(run.events)
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
    const body = Stream.concat(Stream.fromIterable(head), rest).pipe(
      Stream.mapEffect(sseFrames(run, includeUsage)),
      Stream.flattenIterables,
      Stream.encodeText
    )
    return HttpServerResponse.stream(body, {
      contentType: "text/event-stream",
      headers: { "cache-control": "no-cache", "x-accel-buffering": "no" }
    })
  })
