import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { chatReuseTable, runChatReuse } from "../../src/bench/ChatReuse.js"
import { tinyModelPath } from "../support/tinyModel.js"

describe("runChatReuse", () => {
  it.live("later turns reuse the conversation so far with the cache on, and evaluate all of it with the cache off", () =>
    Effect.gen(function*() {
      const modelPath = yield* Effect.promise(tinyModelPath)
      const result = yield* runChatReuse({ modelPath, threads: 1, gpu: false }, { turns: 3, systemRepeat: 5 })
      expect(result.withCache.map((row) => row.turn)).toEqual([1, 2, 3])
      expect(result.withoutCache.map((row) => row.cachedTokens)).toEqual([0, 0, 0])
      for (const [index, on] of result.withCache.entries()) {
        const off = result.withoutCache[index]!
        expect(on.promptTokens).toBe(off.promptTokens)
        expect(on.evaluated).toBe(on.promptTokens - on.cachedTokens)
        if (index > 0) expect(on.cachedTokens).toBeGreaterThan(result.withCache[index - 1]!.promptTokens / 2)
      }
      const table = chatReuseTable(result).split("\n")
      expect(table).toHaveLength(2 + 3 + 1)
      expect(table[5]).toMatch(/^\| total \| \| \d+ \| \| \d+ \| \d+ \| \d+ \|$/)
    }), 60_000)
})
