import { describe, expect, it } from "@effect/vitest"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { Effect, Fiber } from "effect"
import { makeAgent, streamCompletion } from "../../src/bench/SseClient.js"

/** A fake OpenAI-compatible server answering every completion with `events` (already framed), one write each. */
const fakeServer = (status: number, events: ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.async<{ readonly url: string; readonly bodies: Array<unknown>; readonly server: http.Server }>((resume) => {
      const bodies: Array<unknown> = []
      const server = http.createServer((request, response) => {
        let body = ""
        request.on("data", (part: Buffer) => (body += part.toString("utf8")))
        request.on("end", () => {
          bodies.push(JSON.parse(body))
          response.writeHead(status, { "content-type": status === 200 ? "text/event-stream" : "application/json" })
          let index = 0
          const next = () => {
            if (index === events.length) return response.end()
            response.write(events[index++]!)
            setTimeout(next, 2)
          }
          next()
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(Effect.succeed({ url: `http://127.0.0.1:${port}`, bodies, server }))
      })
    }),
    (fake) => Effect.promise(() => new Promise<void>((resolve) => fake.server.close(() => resolve())))
  )

const call = (baseUrl: string) => ({
  baseUrl,
  model: "m",
  prompt: "hello",
  maxTokens: 3,
  temperature: 0.8,
  seed: 7,
  ignoreEos: true
})

const chunk = (text: string) => `data: ${JSON.stringify({ choices: [{ index: 0, text, finish_reason: null }] })}\n\n`

describe("streamCompletion", () => {
  it.scopedLive("records one arrival per text chunk, takes usage from the last chunk, and sends ignore_eos", () =>
    Effect.gen(function*() {
      const usage = `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 3 } })}\r\n\r\n`
      // An event split across writes, CRLF framing, an empty text chunk: all as real servers send them.
      const server = yield* fakeServer(200, [chunk("a"), chunk("b").slice(0, 10), chunk("b").slice(10), chunk(""), chunk("c"), usage, "data: [DONE]\n\n"])
      const agent = makeAgent(server.url, 1)
      const sample = yield* streamCompletion(call(server.url), agent)
      agent.destroy()
      expect(sample.ok).toBe(true)
      expect(sample.chunkTimes).toHaveLength(3)
      expect(sample.completionTokens).toBe(3)
      expect(sample.promptTokens).toBe(5)
      expect(sample.chunkTimes[0]!).toBeGreaterThanOrEqual(sample.startedAt)
      expect(server.bodies[0]).toMatchObject({ model: "m", prompt: "hello", max_tokens: 3, stream: true, ignore_eos: true, seed: 7 })
    }))

  it.scopedLive("an HTTP error or an in-band error event is a failed sample, not a failure", () =>
    Effect.gen(function*() {
      const rejecting = yield* fakeServer(429, ['{"error":{"message":"queue full"}}'])
      const agent = makeAgent(rejecting.url, 1)
      const rejected = yield* streamCompletion(call(rejecting.url), agent)
      expect(rejected.ok).toBe(false)
      expect(rejected.error).toMatch(/HTTP 429/)
      const failing = yield* fakeServer(200, [chunk("a"), `data: ${JSON.stringify({ error: { message: "decode failed" } })}\n\n`])
      const failed = yield* streamCompletion(call(failing.url), makeAgent(failing.url, 1))
      expect(failed.ok).toBe(false)
      expect(failed.error).toBe("decode failed")
      agent.destroy()
    }))

  it.scopedLive("a request lost on a keep-alive socket the server dropped is sent again on a fresh one", () =>
    Effect.gen(function*() {
      // Like llama.cpp's server closing idle keep-alive sockets: every socket's second request is dropped unanswered.
      const served: Array<number> = []
      const server = yield* Effect.acquireRelease(
        Effect.async<{ readonly url: string; readonly server: http.Server }>((resume) => {
          let sockets = 0
          const requestsOn = new WeakMap<object, number>()
          const server = http.createServer((request, response) => {
            const count = (requestsOn.get(request.socket) ?? 0) + 1
            requestsOn.set(request.socket, count)
            if (count > 1) return request.socket.destroy()
            served.push(sockets)
            request.resume()
            request.on("end", () => {
              response.writeHead(200, { "content-type": "text/event-stream" })
              response.end(chunk("a") + "data: [DONE]\n\n")
            })
          })
          server.on("connection", () => sockets++)
          server.listen(0, "127.0.0.1", () => {
            const { port } = server.address() as AddressInfo
            resume(Effect.succeed({ url: `http://127.0.0.1:${port}`, server }))
          })
        }),
        (fake) => Effect.promise(() => new Promise<void>((resolve) => fake.server.close(() => resolve())))
      )
      const agent = makeAgent(server.url, 1)
      const first = yield* streamCompletion(call(server.url), agent)
      const second = yield* streamCompletion(call(server.url), agent)
      agent.destroy()
      expect(first.ok).toBe(true)
      expect(second.ok).toBe(true)
      // The second request went out on the first socket, was dropped, and was answered on a second socket.
      expect(served).toEqual([1, 2])
    }))

  it.scopedLive("an interrupted request is not sent again, even on a reused socket", () =>
    Effect.gen(function*() {
      // The first request is answered; every later one is held unanswered until the socket goes away.
      let requests = 0
      const server = yield* Effect.acquireRelease(
        Effect.async<{ readonly url: string; readonly server: http.Server }>((resume) => {
          const server = http.createServer((request, response) => {
            requests += 1
            request.resume()
            if (requests > 1) return
            request.on("end", () => {
              response.writeHead(200, { "content-type": "text/event-stream" })
              response.end(chunk("a") + "data: [DONE]\n\n")
            })
          })
          server.listen(0, "127.0.0.1", () => {
            const { port } = server.address() as AddressInfo
            resume(Effect.succeed({ url: `http://127.0.0.1:${port}`, server }))
          })
        }),
        (fake) =>
          Effect.promise(() =>
            new Promise<void>((resolve) => {
              fake.server.closeAllConnections()
              fake.server.close(() => resolve())
            })
          )
      )
      const agent = makeAgent(server.url, 1)
      expect((yield* streamCompletion(call(server.url), agent)).ok).toBe(true)
      const held = yield* Effect.fork(streamCompletion(call(server.url), agent))
      while (requests < 2) yield* Effect.sleep("5 millis")
      yield* Fiber.interrupt(held)
      // A resend would reach the server on a fresh socket within a few milliseconds.
      yield* Effect.sleep("200 millis")
      agent.destroy()
      expect(requests).toBe(2)
    }))
})
