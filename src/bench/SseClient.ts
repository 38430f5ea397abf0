import * as http from "node:http"
import * as https from "node:https"
import * as Sse from "@effect/experimental/Sse"
import { Effect } from "effect"
import type { RequestSample } from "./LevelResult.js"

/** One streaming completion to send. */
export interface CompletionCall {
  readonly baseUrl: string
  readonly model: string
  readonly prompt: string
  readonly maxTokens: number
  readonly temperature: number
  readonly seed: number
  readonly ignoreEos: boolean
  readonly apiKey?: string | undefined
  /** Called as each text chunk arrives. */
  readonly onChunk?: ((at: number) => void) | undefined
}

/** A keep-alive connection pool for one base URL: one socket per concurrent stream, reused across requests. */
export const makeAgent = (baseUrl: string, sockets: number): http.Agent =>
  new (baseUrl.startsWith("https:") ? https.Agent : http.Agent)({ keepAlive: true, maxSockets: sockets })

interface StreamChunk {
  readonly choices?: ReadonlyArray<{ readonly text?: string | null; readonly delta?: { readonly content?: string | null } }>
  readonly usage?: { readonly completion_tokens?: number; readonly prompt_tokens?: number } | null
  readonly error?: { readonly message?: string }
}

/**
 * Sends one `POST /v1/completions` with `stream: true` and records when each text chunk arrived. Works against any
 * OpenAI-compatible server: usage comes from `stream_options.include_usage` when the server sends it, otherwise
 * every text chunk counts as one token. Never fails: an error is recorded in the sample.
 */
export const streamCompletion = (call: CompletionCall, agent: http.Agent): Effect.Effect<RequestSample> =>
  Effect.async<RequestSample>((resume) => {
    const body = JSON.stringify({
      model: call.model,
      prompt: call.prompt,
      max_tokens: call.maxTokens,
      temperature: call.temperature,
      seed: call.seed,
      stream: true,
      stream_options: { include_usage: true },
      ignore_eos: call.ignoreEos
    })
    const url = new URL("/v1/completions", call.baseUrl)
    const chunkTimes: Array<number> = []
    let usage: StreamChunk["usage"] = undefined
    let error: string | undefined
    let done = false
    const startedAt = performance.now()
    const finish = (failure?: string) => {
      if (done) return
      done = true
      const failed = failure ?? error
      resume(Effect.succeed({
        ok: failed === undefined && chunkTimes.length > 0,
        error: failed ?? (chunkTimes.length === 0 ? "no text chunk received" : undefined),
        startedAt,
        endedAt: performance.now(),
        chunkTimes,
        completionTokens: usage?.completion_tokens ?? chunkTimes.length,
        promptTokens: usage?.prompt_tokens
      }))
    }
    const onEvent = (data: string, at: number) => {
      if (data === "[DONE]") return
      let chunk: StreamChunk
      try {
        chunk = JSON.parse(data) as StreamChunk
      } catch {
        error = `unparseable SSE data: ${data.slice(0, 80)}`
        return
      }
      if (chunk.error !== undefined) error = chunk.error.message ?? "error event"
      if (chunk.usage != null) usage = chunk.usage
      const choice = chunk.choices?.[0]
      const text = choice?.text ?? choice?.delta?.content
      if (typeof text === "string" && text.length > 0) {
        chunkTimes.push(at)
        call.onChunk?.(at)
      }
    }
    let current: http.ClientRequest | undefined
    let cancelled = false
    // A server may close an idle keep-alive socket just as a request goes out on it (llama.cpp's server does):
    // such a request never got an answer, so it is sent again, as HTTP clients do. The pool may hand out another
    // socket closed the same way; each attempt uses one up, and a failure on a fresh socket is final.
    const send = () => {
      let responded = false
      const request = (url.protocol === "https:" ? https : http).request(url, {
        method: "POST",
        agent,
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          accept: "text/event-stream",
          ...(call.apiKey === undefined ? {} : { authorization: `Bearer ${call.apiKey}` })
        }
      }, (response) => {
        responded = true
        response.setEncoding("utf8")
        if (response.statusCode !== 200) {
          let text = ""
          response.on("data", (part: string) => (text += part))
          response.on("end", () => finish(`HTTP ${response.statusCode}: ${text.slice(0, 200)}`))
          return
        }
        // The parser calls back synchronously inside `feed`, so every event of one network read shares its arrival time.
        let at = 0
        const parser = Sse.makeParser((event) => {
          if (event._tag === "Event") onEvent(event.data.trim(), at)
        })
        response.on("data", (part: string) => {
          at = performance.now()
          const tooLarge = parser.feed(part)
          if (tooLarge !== undefined) {
            finish(tooLarge.message)
            response.destroy()
          }
        })
        response.on("end", () => finish())
        response.on("error", (cause) => finish(cause.message))
      })
      request.on("error", (cause) => {
        if (!cancelled && !responded && request.reusedSocket) send()
        else finish(cause.message)
      })
      current = request
      request.end(body)
    }
    send()
    return Effect.sync(() => {
      cancelled = true
      current?.destroy()
    })
  })
