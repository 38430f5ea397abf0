import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Stream } from "effect"
import { jsonResponse } from "../../src/http/GenerationResponse.js"
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
