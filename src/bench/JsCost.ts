import { fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Effect, Schema } from "effect"
import { replyFrom, scopedChild } from "./ScopedChild.js"

/** What the JS-cost server tells the bench: its URL once, then its CPU time for each ask. */
export type JsCostReply =
  | { readonly _tag: "Listening"; readonly url: string }
  | { readonly _tag: "Cpu"; readonly usage: NodeJS.CpuUsage; readonly effectSteps: number }

/** Server CPU time (all of its threads: the JS thread and V8's GC helpers) spent on Weft's own code. */
export interface JsCostResult {
  /** Per streamed token, ms. */
  readonly perTokenMs: number
  /** Per streamed completion besides its tokens (parsing, admission, response, logs, metrics), ms. */
  readonly perRequestMs: number
  /** Per `GET /health`, ms: what any request costs in routing and middleware. */
  readonly healthMs: number
  /**
   * The same three, counted in steps of Effect's runtime (operations its fibers ran). Unlike CPU time these do not
   * depend on the machine or its load: a change to Weft's Effect code shows in them exactly.
   */
  readonly effectSteps: { readonly perToken: number; readonly perRequest: number; readonly health: number }
  /** Completions measured of each length. */
  readonly shortRequests: number
  readonly longRequests: number
}

/** The JS-cost server failed or is gone, or a request to it failed. */
export class JsCostFailed extends Schema.TaggedError<JsCostFailed>()("JsCostFailed", { message: Schema.String }) {}

const serverEntry = fileURLToPath(new URL("./JsCostServer.ts", import.meta.url))
const shortTokens = 16
const longTokens = 256

const failed = (error: unknown) => new JsCostFailed({ message: error instanceof Error ? error.message : String(error) })

/** `count` streamed completions of `maxTokens` tokens each, one after another. */
export const completions = (url: string, count: number, maxTokens: number) =>
  Effect.tryPromise({
    try: async () => {
      for (let index = 0; index < count; index++) {
        const response = await fetch(`${url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "sim", prompt: `request ${index}: hello`, max_tokens: maxTokens, stream: true, ignore_eos: true, temperature: 0.8 })
        })
        const body = await response.text()
        if (!response.ok || !body.endsWith("data: [DONE]\n\n")) throw new Error(`completion ${index} answered ${response.status}: ${body.slice(0, 200)}`)
      }
    },
    catch: failed
  })

const healthChecks = (url: string, count: number) =>
  Effect.tryPromise({
    try: async () => {
      for (let index = 0; index < count; index++) {
        const response = await fetch(`${url}/health`)
        await response.text()
        if (!response.ok) throw new Error(`/health answered ${response.status}`)
      }
    },
    catch: failed
  })

/**
 * The JS-cost server, started in a child process for the scope, its simulated backend taking `tokenMs` per token: its
 * URL, and its CPU time so far (all its threads, in ms) with the steps its Effect runtime ran.
 */
export const jsCostServer = (tokenMs: number) =>
  Effect.gen(function*() {
    const server = yield* scopedChild(
      () => fork(serverEntry, [String(tokenMs)], { execArgv: ["--import", "tsx"], stdio: ["ignore", "pipe", "pipe", "ipc"] }),
      2000
    )
    const reply = <Tag extends JsCostReply["_tag"]>(tag: Tag, request?: "cpu") =>
      replyFrom(server, {
        name: "JS-cost server",
        accept: (message) => (message as JsCostReply)._tag === tag ? message as Extract<JsCostReply, { readonly _tag: Tag }> : undefined,
        failed: (message) => new JsCostFailed({ message }),
        request
      })
    const { url } = yield* reply("Listening")
    const cpu = Effect.map(reply("Cpu", "cpu"), ({ effectSteps, usage }) => ({ ms: (usage.user + usage.system) / 1000, effectSteps }))
    return { url, cpu }
  })

/**
 * What Weft's own JavaScript costs per token and per request, without llama.cpp: Weft's whole HTTP API (the same
 * `serverLayer` as `weft serve`, with its metrics, request log and middleware) over `SimBackend`, in a child process,
 * and sequential streamed completions from this one. The child's CPU time is read around `requests` completions of
 * 16 tokens and a quarter as many of 256; per token is the slope between the two, per request what is left. The
 * backend takes `tokenMs` per token: at a real decode's several ms the JS thread idles between tokens, and the same JS
 * then costs more CPU per token (2.5× on the 2-core VM; docs/performance.md, "Idle between tokens").
 *
 * On a machine where llama.cpp's threads want every core, this is time taken from them: it shows in tokens per second
 * long before the JS thread is busy.
 */
export const measureJsCost = (requests: number, tokenMs = 1): Effect.Effect<JsCostResult, JsCostFailed> =>
  Effect.scoped(Effect.gen(function*() {
    const { cpu, url } = yield* jsCostServer(tokenMs)
    const costOf = <E>(work: Effect.Effect<void, E>, count: number) =>
      Effect.gen(function*() {
        const before = yield* cpu
        yield* work
        const after = yield* cpu
        return { ms: (after.ms - before.ms) / count, effectSteps: (after.effectSteps - before.effectSteps) / count }
      })

    // Warm-up: the JIT, the prefix cache's slots, SQLite's statements.
    yield* completions(url, 20, shortTokens)
    yield* healthChecks(url, 20)
    const longRequests = Math.max(1, Math.ceil(requests / 4))
    const short = yield* costOf(completions(url, requests, shortTokens), requests)
    const long = yield* costOf(completions(url, longRequests, longTokens), longRequests)
    const health = yield* costOf(healthChecks(url, requests), requests)
    const perTokenMs = (long.ms - short.ms) / (longTokens - shortTokens)
    const perTokenSteps = (long.effectSteps - short.effectSteps) / (longTokens - shortTokens)
    return {
      perTokenMs,
      perRequestMs: short.ms - shortTokens * perTokenMs,
      healthMs: health.ms,
      effectSteps: { perToken: perTokenSteps, perRequest: short.effectSteps - shortTokens * perTokenSteps, health: health.effectSteps },
      shortRequests: requests,
      longRequests
    }
  }))
