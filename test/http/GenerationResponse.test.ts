import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Scope, Stream } from "effect"
import { identity } from "effect/Function"
import type { Readable } from "node:stream"
import { eachChunkOf, jsonResponse, startedBody } from "../../src/http/GenerationResponse.js"
import type { ApiFailure } from "../../src/http/OpenAiErrors.js"
import type { ChoiceEvent } from "../../src/http/GenerationResponse.js"
import { GenerationEvent } from "../../src/scheduler/GenerationRequest.js"
import { StageTimedOut } from "../../src/scheduler/SchedulerErrors.js"

const meta = { kind: "chat", id: "chatcmpl-1", created: 0, model: "m" } as const
const usage = { promptTokens: 3, completionTokens: 2, cachedTokens: 0 }
const started = (index: number): ChoiceEvent => ({
  index,
  event: GenerationEvent.Started({ requestId: `r${index}`, slot: index, seed: index, promptTokens: 3, cachedTokens: 0 })
})

describe("jsonResponse over several choices", () => {
  it.effect("answers with the failure of a choice that failed while another was still running", () =>
    Effect.gen(function*() {
      const timedOut = new StageTimedOut({ stage: "total", limitMs: 5 })
      const events = Stream.make<Array<ChoiceEvent>>(
        started(0),
        started(1),
        { index: 0, event: GenerationEvent.Delta({ text: "a", tokens: 1 }) },
        { index: 1, event: GenerationEvent.Finished({ finishReason: "timeout", usage, error: timedOut }) },
        // Never reached: the failure ends the response.
        { index: 0, event: GenerationEvent.Finished({ finishReason: "stop", usage }) }
      )
      const result = yield* Effect.either(jsonResponse({ meta, events, choices: 2, choicesPerPrompt: 2, logprobs: false }))
      expect(Either.isLeft(result) ? result.left : undefined).toBe(timedOut)
    }))
})

describe("startedBody", () => {
  const text = (value: string) => new TextEncoder().encode(value)
  const delta = (value: string) => GenerationEvent.Delta({ text: value, tokens: 1 })
  const finished = GenerationEvent.Finished({ finishReason: "stop", usage })
  const bytesOf = (events: ReadonlyArray<GenerationEvent>) => {
    const parts = events.flatMap((event) => (event._tag === "Delta" ? [event.text] : event._tag === "Finished" ? ["."] : []))
    return parts.length === 0 ? undefined : text(parts.join(""))
  }
  const failureBytes = (failure: ApiFailure) => text(`!${failure._tag}`)
  const readAll = (body: Readable) =>
    Effect.promise(async () => {
      const parts: Array<Buffer> = []
      for await (const part of body) parts.push(part as Buffer)
      return Buffer.concat(parts).toString()
    })

  it.scoped("fails with the failure of a generation that never started, so its status code stands", () =>
    Effect.gen(function*() {
      const timedOut = new StageTimedOut({ stage: "queue", limitMs: 5 })
      const events = Stream.make<Array<GenerationEvent>>(GenerationEvent.Finished({ finishReason: "timeout", usage, error: timedOut }))
      const result = yield* Effect.either(startedBody(eachChunkOf(events), identity, bytesOf, failureBytes))
      expect(Either.isLeft(result) ? result.left : undefined).toBe(timedOut)
    }))

  it.scoped("carries every event from `Started` in order, then ends", () =>
    Effect.gen(function*() {
      const events = Stream.make<Array<GenerationEvent>>(started(0).event, delta("a"), delta("b"), finished)
      const body = yield* startedBody(eachChunkOf(events), identity, bytesOf, failureBytes)
      expect(yield* readAll(body)).toBe("ab.")
    }))

  it.scoped("sends a failure after `Started` in-band and ends the body", () =>
    Effect.gen(function*() {
      const failure = new StageTimedOut({ stage: "total", limitMs: 5 })
      const events = Stream.concat(Stream.make<Array<GenerationEvent>>(started(0).event, delta("a")), Stream.fail(failure))
      const body = yield* startedBody(eachChunkOf(events), identity, bytesOf, failureBytes)
      expect(yield* readAll(body)).toBe("a!StageTimedOut")
    }))

  it.scopedLive("stops pulling events while nobody reads the body, and goes on when it is read", () =>
    Effect.gen(function*() {
      let pulled = 0
      const piece = "x".repeat(4096)
      const events = Stream.concat(
        Stream.make<Array<GenerationEvent>>(started(0).event),
        Stream.tap(Stream.range(1, 100), () => Effect.sync(() => pulled++)).pipe(
          Stream.map(() => delta(piece)),
          Stream.concat(Stream.make(finished))
        )
      )
      const body = yield* startedBody(eachChunkOf(events), identity, bytesOf, failureBytes)
      yield* Effect.sleep("50 millis")
      // The body holds about its high-water mark (16 KiB) before the runner waits: a few pieces, not all 100.
      expect(pulled).toBeLessThan(10)
      expect((yield* readAll(body)).length).toBe(100 * piece.length + 1)
      expect(pulled).toBe(100)
    }))

  it.live("stops the events, running their finalizers, and destroys the body when the request's scope closes", () =>
    Effect.gen(function*() {
      let finalized = false
      const events = Stream.concat(Stream.make<Array<GenerationEvent>>(started(0).event, delta("a")), Stream.never).pipe(
        Stream.ensuring(Effect.sync(() => {
          finalized = true
        }))
      )
      const scope = yield* Scope.make()
      const body = yield* Scope.extend(startedBody(eachChunkOf(events), identity, bytesOf, failureBytes), scope)
      yield* Effect.sleep("10 millis")
      expect(finalized).toBe(false)
      yield* Scope.close(scope, Exit.void)
      expect(finalized).toBe(true)
      expect(body.destroyed).toBe(true)
    }))
})
