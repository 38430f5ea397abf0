import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Scope } from "effect"
import { startOffThreadTokenizer } from "../../../src/engine/llama/OffThreadTokenizer.js"
import { ModelPresets } from "../../../src/model/ModelPresets.js"
import { tinyModelPath } from "../../support/tinyModel.js"

describe("the tokenizer worker", () => {
  // Terminating a worker while it is inside node-llama-cpp's native code aborts the whole process ("terminate called
  // after throwing an instance of 'Napi::Error'"): this test's process, every test file with it. Closing must wait.
  it.live("closing while the worker tokenizes lets it answer and end itself instead of terminating it", () =>
    Effect.gen(function*() {
      const modelPath = yield* Effect.promise(tinyModelPath)
      const scope = yield* Scope.make()
      const loading = yield* Scope.extend(startOffThreadTokenizer({ modelPath, vocabSize: ModelPresets.tiny.vocabSize, binary: "prebuilt" }), scope)
      const tokenizer = yield* loading
      expect(tokenizer.tables.longestTokenBytes).toBeGreaterThan(0)
      // Runs of newlines are llama.cpp's slow case (quadratic): about a second of native code for this many.
      const text = "\n".repeat(2 ** 16)
      const tokenizing = yield* Effect.fork(tokenizer.tokenize(text, false))
      yield* Effect.sleep("100 millis")
      yield* Scope.close(scope, Exit.void)
      // The request in flight was answered before the worker ended: terminated, it would have failed (or worse).
      const tokens = yield* Fiber.join(tokenizing)
      expect(tokens.length).toBeGreaterThan(0)
    }), 60_000)
})
