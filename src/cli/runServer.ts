import { HttpServer } from "@effect/platform"
import { Console, Context, Effect, Layer } from "effect"
import { WeftConfig } from "../config/WeftConfig.js"
import type { WeftSettings } from "../config/WeftConfig.js"
import type { ModelInfo } from "../engine/Backend.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { WeftLive } from "../layers.js"
import { baseUrl } from "../http/ServerUrl.js"

const banner = (settings: WeftSettings, models: ReadonlyArray<ModelInfo>, url: string): string => {
  const lines = [
    "",
    `Weft is serving ${models.map((info) => `"${info.id}"`).join(", ")} on ${url}`,
    ...models.map((info) =>
      `  ${models.length > 1 ? `${info.id}: ` : ""}${info.parallel} parallel sequences × ${info.contextSize} tokens of context, queue up to ${settings.maxQueue}`
    ),
    ""
  ]
  const info = models[0]!
  if (settings.model === undefined) {
    lines.push(
      "  This is the DEMO model: random weights, so its answers are gibberish. It only shows that everything works.",
      `  (generated once into ${settings.dataDir}; delete that folder to remove it)`,
      "  To serve a real model, download a GGUF file (e.g. from huggingface.co) and run:",
      "    npm start -- --model /path/to/model.gguf        or   WEFT_MODEL=/path/to/model.gguf npm start",
      ""
    )
  }
  lines.push(
    "  Try it:",
    `    curl ${url}/v1/chat/completions -H 'Content-Type: application/json' \\`,
    `      -d '{"model": "${info.id}", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'`,
    "",
    `  Dashboard: ${url}/    Health: ${url}/health    Models: ${url}/v1/models    Stop: Ctrl-C`,
    ""
  )
  return lines.join("\n")
}

/** Runs the server until interrupted (SIGINT/SIGTERM), then drains it gracefully. */
export const runServer = (settings: WeftSettings) =>
  Effect.scoped(
    Effect.gen(function*() {
      const context = yield* Layer.build(WeftLive.pipe(Layer.provide(WeftConfig.layer(settings))))
      const url = baseUrl(Context.get(context, HttpServer.HttpServer).address)
      yield* Console.log(
        settings.model === undefined
          ? `weft: listening on ${url}; preparing the demo model in ${settings.dataDir} (first run generates it)…`
          : `weft: listening on ${url}; loading ${settings.model}…`
      )
      const engines = yield* Context.get(context, ModelRegistry).ready
      yield* Console.log(banner(settings, engines.map((engine) => engine.backend.info), url))
      return yield* Effect.never.pipe(
        Effect.onInterrupt(() =>
          Console.log(`\nweft: shutting down: no new requests; in-flight ones get up to ${settings.shutdownGraceMs / 1000} s to finish…`)
        )
      )
    })
  )
