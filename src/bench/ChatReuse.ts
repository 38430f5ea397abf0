import { Effect, Stream } from "effect"
import { Backend } from "../engine/Backend.js"
import type { ChatMessage } from "../engine/Backend.js"
import { defaultSampling } from "../engine/SamplingOptions.js"
import { llamaBackendLayer, schedulerLayer } from "../host/LocalEngine.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import type { EngineBenchConfig } from "./InProcessTarget.js"

/** The multi-turn chat scenario: one conversation of `turns` turns under a long system prompt. */
export interface ChatReuseSettings {
  readonly turns: number
  /** The system prompt is one weather-assistant sentence repeated this many times (about 12 tokens each). */
  readonly systemRepeat: number
}

/** What one turn cost: its prompt, the part the prefix cache supplied, and the time to its first token. */
export interface TurnResult {
  readonly turn: number
  readonly promptTokens: number
  readonly cachedTokens: number
  readonly evaluated: number
  readonly ttftMs: number
}

/** The same conversation with the prefix cache on and off. */
export interface ChatReuseResult {
  readonly turns: number
  readonly completionTokens: number
  readonly withCache: ReadonlyArray<TurnResult>
  readonly withoutCache: ReadonlyArray<TurnResult>
}

const completionTokens = 24

/** The scenario runs its own engine (4 sequences of 4096 tokens) on the bench's model, threads and GPU setting. */
type ChatEngine = Pick<EngineBenchConfig, "modelPath" | "threads" | "gpu">

/** One conversation on a fresh engine; each turn's prompt is the whole chat so far, rendered by the model's template. */
const converse = (
  engine: ChatEngine,
  settings: ChatReuseSettings,
  cacheEnabled: boolean
) =>
  Effect.gen(function*() {
    const scheduler = yield* RequestScheduler
    const backend = yield* Backend
    const systemPrompt = "You are a helpful assistant who answers questions about the weather. ".repeat(settings.systemRepeat)
    const messages: Array<ChatMessage> = [{ role: "system", content: systemPrompt }]
    const results: Array<TurnResult> = []
    // Warm-up, so the first measured turn does not pay for first-use costs.
    const warmUp = yield* backend.renderChat([{ role: "user", content: "warm up" }])
    yield* Stream.runDrain(
      scheduler.submit({ id: `warm-${cacheEnabled}`, prompt: warmUp, sampling: { ...defaultSampling, seed: 0 }, maxTokens: 4 })
    )
    for (let turn = 1; turn <= settings.turns; turn++) {
      messages.push({ role: "user", content: `Turn ${turn}: what will the weather be like tomorrow in city number ${turn}?` })
      const prompt = yield* backend.renderChat(messages)
      const startedAt = performance.now()
      let firstTokenAt: number | undefined
      let text = ""
      let usage = { promptTokens: 0, cachedTokens: 0 }
      yield* scheduler.submit({
        id: `${cacheEnabled ? "on" : "off"}-${turn}`,
        prompt,
        sampling: { ...defaultSampling, seed: turn, ignoreEos: true },
        maxTokens: completionTokens
      }).pipe(
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
      schedulerLayer(
        llamaBackendLayer({ modelPath: engine.modelPath, parallel: 4, contextSize: 4096, threads: engine.threads, gpu: engine.gpu }),
        { shutdownGraceMs: 0 },
        { enabled: cacheEnabled }
      )
    )
  )

/**
 * Prefix reuse across a multi-turn chat, in-process: prompt tokens evaluated and time to first token per turn, with
 * the prefix cache on, then off (each on its own engine, so neither inherits the other's KV).
 */
export const runChatReuse = (
  engine: ChatEngine,
  settings: ChatReuseSettings
) =>
  Effect.gen(function*() {
    const withCache = yield* converse(engine, settings, true)
    const withoutCache = yield* converse(engine, settings, false)
    return { turns: settings.turns, completionTokens, withCache, withoutCache } satisfies ChatReuseResult
  })

/** The scenario as a markdown table: one row per turn, then the totals. */
export const chatReuseTable = (result: ChatReuseResult): string => {
  const total = (rows: ReadonlyArray<TurnResult>, key: "evaluated" | "ttftMs") => rows.reduce((sum, row) => sum + row[key], 0)
  return [
    "| turn | prompt tokens | evaluated (cache on) | cached | TTFT ms (cache on) | evaluated (cache off) | TTFT ms (cache off) |",
    "|---:|---:|---:|---:|---:|---:|---:|",
    ...result.withCache.map((on, index) => {
      const off = result.withoutCache[index]!
      return `| ${on.turn} | ${on.promptTokens} | ${on.evaluated} | ${on.cachedTokens} | ${on.ttftMs.toFixed(0)} | ${off.evaluated} | ${off.ttftMs.toFixed(0)} |`
    }),
    `| total | | ${total(result.withCache, "evaluated")} | | ${total(result.withCache, "ttftMs").toFixed(0)} | ` +
    `${total(result.withoutCache, "evaluated")} | ${total(result.withoutCache, "ttftMs").toFixed(0)} |`
  ].join("\n")
}
