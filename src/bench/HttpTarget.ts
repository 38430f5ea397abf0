import * as http from "node:http"
import { Effect, Schema } from "effect"
import type { Scope } from "effect"
import type { BenchTarget } from "./BenchTarget.js"
import { makeAgent, streamCompletion } from "./SseClient.js"

/** The server under test did not answer as an OpenAI-compatible server. */
export class ServerUnreachable extends Schema.TaggedError<ServerUnreachable>()("ServerUnreachable", {
  url: Schema.String,
  message: Schema.String
}) {}

const getJson = (url: string): Effect.Effect<{ readonly status: number; readonly body: unknown }, ServerUnreachable> =>
  Effect.async((resume) => {
    const request = http.get(url, (response) => {
      let text = ""
      response.setEncoding("utf8")
      response.on("data", (part: string) => (text += part))
      response.on("end", () => {
        let body: unknown = undefined
        try {
          body = JSON.parse(text)
        } catch {
          body = text
        }
        resume(Effect.succeed({ status: response.statusCode ?? 0, body }))
      })
    })
    request.on("error", (cause) => resume(Effect.fail(new ServerUnreachable({ url, message: cause.message }))))
    return Effect.sync(() => request.destroy())
  })

/** The id of the first model `GET /v1/models` lists. */
export const firstModelId = (baseUrl: string): Effect.Effect<string, ServerUnreachable> =>
  Effect.flatMap(getJson(new URL("/v1/models", baseUrl).toString()), ({ body, status }) => {
    const id = (body as { data?: ReadonlyArray<{ id?: unknown }> } | undefined)?.data?.[0]?.id
    return status === 200 && typeof id === "string"
      ? Effect.succeed(id)
      : Effect.fail(new ServerUnreachable({ url: baseUrl, message: `GET /v1/models answered ${status} without a model id` }))
  })

/** Polls `GET /health` until it answers 200 (Weft and llama-server answer 503 while the model loads). */
export const awaitHealthy = (baseUrl: string, timeoutMs: number): Effect.Effect<void, ServerUnreachable> =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    let last = "no answer"
    while (Date.now() < deadline) {
      const answer = yield* getJson(new URL("/health", baseUrl).toString()).pipe(Effect.either)
      if (answer._tag === "Right" && answer.right.status === 200) return
      last = answer._tag === "Right" ? `status ${answer.right.status}` : answer.left.message
      yield* Effect.sleep("200 millis")
    }
    return yield* new ServerUnreachable({ url: baseUrl, message: `not healthy after ${timeoutMs} ms (${last})` })
  })

/** Any OpenAI-compatible server, measured over HTTP with streaming `/v1/completions` and `ignore_eos`. */
export const httpTarget = (options: {
  readonly name: string
  readonly baseUrl: string
  readonly model?: string | undefined
  readonly apiKey?: string | undefined
  readonly sockets: number
  readonly pids?: ReadonlyArray<number> | undefined
}): Effect.Effect<BenchTarget, ServerUnreachable, Scope.Scope> =>
  Effect.gen(function*() {
    const model = options.model ?? (yield* firstModelId(options.baseUrl))
    const agent = yield* Effect.acquireRelease(
      Effect.sync(() => makeAgent(options.baseUrl, options.sockets)),
      (agent) => Effect.sync(() => agent.destroy())
    )
    return {
      name: options.name,
      pids: options.pids ?? [],
      prepare: () => Effect.void,
      send: (call) =>
        streamCompletion(
          {
            baseUrl: options.baseUrl,
            model,
            prompt: call.prompt,
            maxTokens: call.maxTokens,
            temperature: call.temperature,
            seed: call.seed,
            ignoreEos: true,
            apiKey: options.apiKey,
            onChunk: call.onChunk
          },
          agent
        )
    } satisfies BenchTarget
  })
