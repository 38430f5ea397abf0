import * as http from "node:http"
import type { AddressInfo } from "node:net"

/** What the fault upstream does with one request. */
export type Fault =
  | { readonly _tag: "Pass" }
  /** Answers with this status and an OpenAI error body (429 with `Retry-After` when `retryAfter` is set). */
  | { readonly _tag: "Status"; readonly status: number; readonly retryAfter?: string; readonly message?: string }
  /** Destroys the connection before answering. */
  | { readonly _tag: "ResetBeforeHeaders" }
  /** Sends the status line and headers of the real answer, then destroys the connection. */
  | { readonly _tag: "ResetAfterHeaders" }
  /** Sends half of the real (non-streamed) body, then destroys the connection. */
  | { readonly _tag: "ResetMidBody" }
  /** Sends nothing for `ms`, then destroys the connection. */
  | { readonly _tag: "Stall"; readonly ms: number }
  /** Relays the first `frames` frames of the real stream, then ends it cleanly without `[DONE]`. */
  | { readonly _tag: "CloseStreamAfter"; readonly frames: number }

/** One request the fault upstream received, as a test asserts on it. */
export interface FaultLogEntry {
  readonly requestId: string
  readonly stream: boolean
  readonly fault: Fault["_tag"]
  readonly authorization: string | undefined
  readonly traceparent: string | undefined
  readonly model: unknown
  /** When it arrived (`performance.now()`), to order the attempts of one request across upstreams. */
  readonly at: number
  /** Whether any byte of a response body went out. */
  bodyStarted: boolean
  /** Whether the answer went out whole. */
  completed: boolean
}

export interface FaultUpstream {
  /** The OpenAI base URL (`…/v1`) to configure as a deployment's `url`. */
  readonly baseURL: string
  readonly log: Array<FaultLogEntry>
  /** Connections accepted since start. */
  readonly connections: () => number
  readonly close: () => Promise<void>
}

/**
 * An OpenAI-compatible upstream for tests: a proxy in front of a real server (`target`, e.g. a Weft on the simulator)
 * that injects the fault `plan` picks for each request, and logs what it did, so tests can assert from the upstream's
 * side (e.g. that no request was sent again after a byte of its answer went out).
 */
export const startFaultUpstream = async (target: string, plan: (request: { readonly index: number; readonly stream: boolean; readonly requestId: string }) => Fault): Promise<FaultUpstream> => {
  const log: Array<FaultLogEntry> = []
  let connections = 0
  let index = 0
  const sockets = new Set<import("node:net").Socket>()
  const server = http.createServer(async (req, res) => {
    const chunks: Array<Buffer> = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const text = Buffer.concat(chunks).toString("utf8")
    const body = text === "" ? {} : JSON.parse(text) as { stream?: boolean; model?: unknown }
    const stream = body.stream === true
    const requestId = String(req.headers["x-request-id"] ?? "")
    const fault = plan({ index: index++, stream, requestId })
    const entry: FaultLogEntry = {
      requestId,
      stream,
      fault: fault._tag,
      authorization: req.headers["authorization"],
      traceparent: req.headers["traceparent"] as string | undefined,
      model: body.model,
      at: performance.now(),
      bodyStarted: false,
      completed: false
    }
    log.push(entry)
    const write = (data: string | Uint8Array) => {
      entry.bodyStarted = true
      res.write(data)
    }
    switch (fault._tag) {
      case "Status": {
        const headers: Record<string, string> = { "content-type": "application/json" }
        if (fault.retryAfter !== undefined) headers["retry-after"] = fault.retryAfter
        res.writeHead(fault.status, headers)
        entry.bodyStarted = true
        res.end(JSON.stringify({ error: { message: fault.message ?? `injected ${fault.status}`, type: "server_error", param: null, code: null } }))
        return
      }
      case "ResetBeforeHeaders":
        req.socket.destroy()
        return
      case "Stall":
        setTimeout(() => req.socket.destroy(), fault.ms)
        return
    }
    const upstream = await fetch(`${target}${req.url!.replace(/^\/v1/, "/v1")}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: text
    })
    res.writeHead(upstream.status, { "content-type": upstream.headers.get("content-type") ?? "application/json" })
    if (fault._tag === "ResetAfterHeaders") {
      res.flushHeaders()
      await upstream.body?.cancel()
      setTimeout(() => req.socket.destroy(), 5)
      return
    }
    if (fault._tag === "ResetMidBody") {
      const whole = await upstream.text()
      write(whole.slice(0, Math.floor(whole.length / 2)))
      setTimeout(() => req.socket.destroy(), 5)
      return
    }
    const reader = upstream.body!.getReader()
    const decoder = new TextDecoder()
    let pending = ""
    let frames = 0
    while (true) {
      const { done, value } = await reader.read()
      if (done) break
      if (fault._tag !== "CloseStreamAfter") {
        write(value)
        continue
      }
      pending += decoder.decode(value, { stream: true })
      let end: number
      while ((end = pending.indexOf("\n\n")) !== -1) {
        const frame = pending.slice(0, end + 2)
        pending = pending.slice(end + 2)
        if (frames >= fault.frames) {
          await reader.cancel()
          res.end()
          return
        }
        frames++
        write(frame)
      }
    }
    entry.completed = true
    res.end()
  })
  // Idle connections stay open as long as the client's pool keeps them (Node's default would close them after 5 s).
  server.keepAliveTimeout = 60_000
  server.on("connection", (socket) => {
    connections++
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  return {
    baseURL: `http://127.0.0.1:${port}/v1`,
    log,
    connections: () => connections,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      })
  }
}
