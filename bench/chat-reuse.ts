/**
 * Prefix reuse across a 10-turn chat: prompt tokens evaluated and time to first token per turn, with the prefix cache
 * on and off, in-process on a generated model.
 *
 *   npx tsx bench/chat-reuse.ts [--preset demo|bench] [--turns 10] [--system-repeat 60]
 */
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { Effect, Layer, Stream } from "effect"
import { Backend } from "../src/engine/Backend.js"
import type { ChatMessage } from "../src/engine/Backend.js"
import { LlamaBackend } from "../src/engine/llama/LlamaBackend.js"
import { defaultSampling } from "../src/engine/SamplingOptions.js"
import { PrefixCacheConfig, SeqPool } from "../src/engine/SeqPool.js"
import { ensureModel } from "../src/model/generateModel.js"
import type { ModelPreset } from "../src/model/ModelPresets.js"
import { RequestScheduler } from "../src/scheduler/RequestScheduler.js"
import { SchedulerConfig } from "../src/scheduler/SchedulerConfig.js"

const { values } = parseArgs({
  options: {
    preset: { type: "string", default: "bench" },
    turns: { type: "string", default: "10" },
    "system-repeat": { type: "string", default: "60" }
  }
})
const turns = Number(values.turns)
const systemPrompt = "You are a helpful assistant who answers questions about the weather. ".repeat(Number(values["system-repeat"]))

interface TurnResult {
  readonly turn: number
  readonly promptTokens: number
  readonly cachedTokens: number
  readonly evaluated: number
  readonly ttftMs: number
}

const chat = (modelPath: string, cacheEnabled: boolean) =>
  Effect.gen(function*() {
    const scheduler = yield* RequestScheduler
    const backend = yield* Backend
    const messages: Array<ChatMessage> = [{ role: "system", content: systemPrompt }]
    const results: Array<TurnResult> = []
    // Warm-up, so the first measured turn does not pay for first-use costs.
    const warmUp = yield* backend.renderChat([{ role: "user", content: "warm up" }])
    yield* Stream.runDrain(
      scheduler.submit({ id: `warm-${cacheEnabled}`, prompt: warmUp, sampling: { ...defaultSampling, seed: 0 }, maxTokens: 4 })
    )
    for (let turn = 1; turn <= turns; turn++) {
      messages.push({ role: "user", content: `Turn ${turn}: what will the weather be like tomorrow in city number ${turn}?` })
      const prompt = yield* backend.renderChat(messages)
      const startedAt = performance.now()
      let firstTokenAt: number | undefined
      let text = ""
      let usage = { promptTokens: 0, cachedTokens: 0 }
      yield* scheduler
        .submit({
          id: `${cacheEnabled ? "on" : "off"}-${turn}`,
          prompt,
          sampling: { ...defaultSampling, seed: turn, ignoreEos: true },
          maxTokens: 24
        })
        .pipe(
          Stream.runForEach((event) =>
            Effect.sync(() => {
              if (event._tag === "Delta") {
                firstTokenAt ??= performance.now()
                text += event.text
              }
              if (event._tag === "Finished") usage = event.usage
            })
          )
        )
      messages.push({ role: "assistant", content: text })
      results.push({
        turn,
        promptTokens: usage.promptTokens,
        cachedTokens: usage.cachedTokens,
        evaluated: usage.promptTokens - usage.cachedTokens,
        ttftMs: (firstTokenAt ?? performance.now()) - startedAt
      })
    }
    return results
  }).pipe(
    Effect.provide(
      RequestScheduler.Default.pipe(
        Layer.provideMerge(SeqPool.Default),
        Layer.provide(SchedulerConfig.layer({ shutdownGraceMs: 0 })),
        Layer.provide(PrefixCacheConfig.layer({ enabled: cacheEnabled })),
        Layer.provideMerge(LlamaBackend.layer({ modelPath, parallel: 4, contextSize: 4096, gpu: false }))
      )
    )
  )

const program = Effect.gen(function*() {
  const modelPath = yield* ensureModel(values.preset as ModelPreset, path.join(os.tmpdir(), "weft-bench-models"))
  const withCache = yield* chat(modelPath, true)
  const withoutCache = yield* chat(modelPath, false)
  console.log(`model: ${path.basename(modelPath)}, ${turns} turns, 24 completion tokens per turn, threads = cores`)
  console.log("| turn | prompt tokens | evaluated (cache on) | cached | TTFT ms (cache on) | evaluated (cache off) | TTFT ms (cache off) |")
  console.log("|---:|---:|---:|---:|---:|---:|---:|")
  for (let index = 0; index < turns; index++) {
    const on = withCache[index]!
    const off = withoutCache[index]!
    console.log(
      `| ${on.turn} | ${on.promptTokens} | ${on.evaluated} | ${on.cachedTokens} | ${on.ttftMs.toFixed(0)} | ${off.evaluated} | ${off.ttftMs.toFixed(0)} |`
    )
  }
  const total = (rows: ReadonlyArray<TurnResult>, key: "evaluated" | "ttftMs") => rows.reduce((sum, row) => sum + row[key], 0)
  console.log(
    `| total | | ${total(withCache, "evaluated")} | | ${total(withCache, "ttftMs").toFixed(0)} | ${total(withoutCache, "evaluated")} | ${
      total(withoutCache, "ttftMs").toFixed(0)
    } |`
  )
})

Effect.runPromise(program).catch((error) => {
  console.error(error)
  process.exit(1)
})
