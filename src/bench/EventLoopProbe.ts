// Event-loop lag while adversarial prompts (issue 19, item 1) arrive: starts the server in this process on the tiny
// model, keeps one stream running, sends each input, and samples this process's event-loop delay meanwhile.
//   npx tsx src/bench/EventLoopProbe.ts [--input NAME]... [--context N] [--threads N] [--limit-s S]
import { HttpServer } from "@effect/platform"
import { Effect, Logger, LogLevel, Layer, ManagedRuntime } from "effect"
import * as os from "node:os"
import * as path from "node:path"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { llamaBackendLayer, schedulerLayer } from "../host/LocalEngine.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { serverLayer } from "../layers.js"
import { ensureModel } from "../model/generateModel.js"

/** The inputs of item 1: a body for a route. */
const inputs: Record<string, { readonly route: string; readonly body: () => unknown }> = {
  // No request: the lag the running stream alone sees on this machine, for comparison.
  idle: { route: "", body: () => ({}) },
  newlines: { route: "/v1/chat/completions", body: () => ({ messages: [{ role: "user", content: "\n".repeat(2 ** 20) }], max_tokens: 1, model: "weft-tiny-s42" }) },
  yuml: { route: "/v1/completions", body: () => ({ prompt: "ÿ".repeat(2 ** 20), max_tokens: 1, model: "weft-tiny-s42" }) },
  bos1m: { route: "/v1/completions", body: () => ({ prompt: "<s>".repeat(2 ** 20), max_tokens: 1, model: "weft-tiny-s42" }) },
  bos20k: { route: "/v1/completions", body: () => ({ prompt: "<s>".repeat(20_000), max_tokens: 1, model: "weft-tiny-s42" }) },
  plain4mb: { route: "/v1/completions", body: () => ({ prompt: "the quick brown fox jumps over the lazy dog. ".repeat(93_000), max_tokens: 1, model: "weft-tiny-s42" }) }
}

const args = process.argv.slice(2)
const flag = (name: string) => args.flatMap((arg, index) => (arg === `--${name}` ? [args[index + 1]!] : []))
const chosen = flag("input").length > 0 ? flag("input") : Object.keys(inputs)
const threads = Number(flag("threads")[0] ?? 1)
const contextSize = Number(flag("context")[0] ?? 8192)
const limitMs = Number(flag("limit-s")[0] ?? 20) * 1000

const modelPath = await Effect.runPromise(ensureModel("tiny", path.join(os.tmpdir(), "weft-probe-models")))
const runtime = ManagedRuntime.make(
  serverLayer(
    [{ engine: schedulerLayer(llamaBackendLayer({ modelPath, parallel: 2, contextSize, threads, gpu: false })) }],
    { host: "127.0.0.1", port: 0, maxBodyBytes: 8 * 1024 * 1024, shutdownGraceMs: 0 },
    { databasePath: ":memory:" }
  ).pipe(Layer.provide(Logger.minimumLogLevel(LogLevel.None)))
)
const port = await runtime.runPromise(
  Effect.flatMap(HttpServer.HttpServer, (server) => Effect.succeed(server.address._tag === "TcpAddress" ? server.address.port : 0))
)
await runtime.runPromise(Effect.flatMap(ModelRegistry, (registry) => registry.ready))
const url = `http://127.0.0.1:${port}`

// A background stream that runs for the whole probe: its tokens count how generation went on.
let streamed = 0
const background = new AbortController()
void fetch(`${url}/v1/completions`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ model: "weft-tiny-s42", prompt: "once upon a time", max_tokens: 100_000, ignore_eos: true, stream: true }),
  signal: background.signal
}).then(async (response) => {
  for await (const chunk of response.body!) streamed += new TextDecoder().decode(chunk).split("data: ").length - 1
}).catch(() => {})

const ms = (ns: number) => (ns / 1e6).toFixed(1)
console.log(`context ${contextSize}; lag = event-loop delay of the server process while the input is handled`)
for (const name of chosen) {
  const input = inputs[name]!
  const body = JSON.stringify(input.body())
  const histogram = monitorEventLoopDelay({ resolution: 10 })
  const tokensBefore = streamed
  const started = performance.now()
  histogram.enable()
  const outcome = input.route === "" ? await new Promise<string>((resolve) => setTimeout(() => resolve("-"), 500)) : await Promise.race([
    fetch(`${url}${input.route}`, { method: "POST", headers: { "content-type": "application/json" }, body }).then(
      async (response) => `${response.status} ${(await response.text()).slice(0, 120)}`
    ),
    new Promise<string>((resolve) => setTimeout(() => resolve("no answer yet"), limitMs))
  ])
  // Let the histogram see the loop once more after the answer.
  await new Promise((resolve) => setTimeout(resolve, 50))
  histogram.disable()
  const seconds = (performance.now() - started) / 1000
  console.log(
    `${name.padEnd(9)} ${(Buffer.byteLength(body) / 1e6).toFixed(2)} MB  lag max ${ms(histogram.max)} ms  p99 ${ms(histogram.percentile(99))} ms  ` +
      `(${seconds.toFixed(1)} s, ${streamed - tokensBefore} stream tokens)  → ${outcome}`
  )
}
background.abort()
await runtime.dispose()
process.exit(0)
