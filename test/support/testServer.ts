import { HttpServer } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { Effect, Layer, Logger, LogLevel, ManagedRuntime, Option } from "effect"
import * as net from "node:net"
import type { Backend } from "../../src/engine/Backend.js"
import type { ModelsConfig } from "../../src/config/ModelsConfig.js"
import type { PrefixCacheSettings } from "../../src/engine/SeqPool.js"
import { schedulerLayer } from "../../src/host/LocalEngine.js"
import type { Engine, EngineStartFailed } from "../../src/host/LocalEngine.js"
import { ModelRegistry } from "../../src/host/ModelRegistry.js"
import { CurrentPrincipal } from "../../src/identity/Principal.js"
import type { Principal } from "../../src/identity/Principal.js"
import { defaultMaxAdapters, serverLayer } from "../../src/layers.js"
import type { FineTuningInput, OperationsSettings } from "../../src/layers.js"
import type { AdapterSettings } from "../../src/host/AdapterContexts.js"
import type { SessionKvSettings } from "../../src/sessions/SessionKvFiles.js"
import type { OpenServerRefused } from "../../src/identity/AuthErrors.js"
import type { PluginLoadFailed } from "../../src/plugins/PluginErrors.js"
import type { AuthSettings } from "../../src/identity/Authentication.js"
import type { SchedulerSettings } from "../../src/scheduler/SchedulerConfig.js"
import type { MemoryManager, MemorySettings } from "../../src/memory/MemoryManager.js"

/** Options of `testServerLayer`; everything has a test-friendly default. */
export interface TestServerOptions {
  readonly scheduler?: Partial<SchedulerSettings>
  readonly cache?: Partial<PrefixCacheSettings>
  /** Defaults to an in-memory database. */
  readonly sessionsDatabasePath?: string
  readonly maxBodyBytes?: number
  readonly shutdownGraceMs?: number
  readonly logText?: boolean
  /** `--allowed-hosts`; by default the loopback names, as the server is bound to 127.0.0.1. */
  readonly allowedHosts?: ReadonlyArray<string>
  /** `--cors-origins`; none by default. */
  readonly corsOrigins?: ReadonlyArray<string>
  /** The API keys database (`keys.sqlite` of a data dir, to share it with the CLI); in memory by default. */
  readonly keysDatabasePath?: string
  /** `--auth` and `--metrics-public`; by default `auto` (on once a key exists) with `/metrics` behind an admin key. */
  readonly auth?: AuthSettings
  /** `--host`; 127.0.0.1 by default. */
  readonly host?: string
  /** The audit log file; none by default. */
  readonly auditLogPath?: string
  /** Every request is made as this caller (rate limits, audit), as if it had authenticated; none by default. */
  readonly principal?: Principal
  /** The dashboard's event stream and the alert rules; defaults otherwise. */
  readonly operations?: OperationsSettings
  /** The memory budget and how RSS is measured; by default 80% of system memory and the process's own RSS. */
  readonly memory?: MemorySettings
  /** The config file's `models` (routed models: upstream deployments, fallbacks); none by default. */
  readonly models?: ModelsConfig
  /** LoRA adapters declared at start-up and `--max-adapters`; none and the default by default. */
  readonly adapters?: Partial<AdapterSettings>
  /** Session KV on disk; none by default. */
  readonly sessionKv?: SessionKvSettings
  /** Fine-tuning (files, jobs, train → serve); off (404) by default. */
  readonly fineTuning?: FineTuningInput
  /** What the server is built under, such as a test logger or tracer; by default only errors are logged. */
  readonly observability?: Layer.Layer<never>
}

/** A server on 127.0.0.1 and a free port in front of any backend (LlamaBackend on a tiny model, or SimBackend). */
export const testServerLayer = <E extends EngineStartFailed>(
  backend: Layer.Layer<Backend, E>,
  options: TestServerOptions = {}
): Layer.Layer<HttpServer.HttpServer | ModelRegistry | MemoryManager, HttpServerError.ServeError | OpenServerRefused | PluginLoadFailed> =>
  serverLayer(
    [{ engine: schedulerLayer(backend, options.scheduler, options.cache) }],
    {
      host: options.host ?? "127.0.0.1",
      port: 0,
      maxBodyBytes: options.maxBodyBytes ?? 4 * 1024 * 1024,
      shutdownGraceMs: options.shutdownGraceMs ?? 0,
      allowedHosts: options.allowedHosts,
      corsOrigins: options.corsOrigins,
      auth: options.auth
    },
    { databasePath: options.sessionsDatabasePath ?? ":memory:" },
    { logText: options.logText ?? false },
    { databasePath: options.keysDatabasePath ?? ":memory:" },
    { path: options.auditLogPath },
    options.operations,
    options.memory,
    options.models,
    { maxAdapters: options.adapters?.maxAdapters ?? defaultMaxAdapters, adapters: options.adapters?.adapters ?? [] },
    options.sessionKv,
    options.fineTuning
  ).pipe(
    // The server's requests run in the context it was built in, so a principal provided here is every request's caller.
    Layer.provide(options.principal === undefined ? Layer.empty : Layer.succeed(CurrentPrincipal, Option.some(options.principal))),
    Layer.provide(options.observability ?? Logger.minimumLogLevel(LogLevel.Error))
  )

/** A running server on a free port; `close` drains it like SIGTERM does. */
export interface TestServer {
  readonly url: string
  readonly port: number
  /** For the `openai` client. */
  readonly baseURL: string
  readonly engine: Engine
  readonly close: () => Promise<void>
}

/** A server that is listening but whose model may still be loading. */
export interface LoadingServer {
  readonly url: string
  readonly port: number
  readonly ready: () => Promise<Engine>
  readonly close: () => Promise<void>
}

/** Starts the real HTTP server on 127.0.0.1:0 in front of `backend`, without waiting for the model. */
export const startListening = async <E extends EngineStartFailed>(
  backend: Layer.Layer<Backend, E>,
  options: TestServerOptions = {}
): Promise<LoadingServer> => {
  const runtime = ManagedRuntime.make(testServerLayer(backend, options))
  const port = await runtime.runPromise(
    Effect.flatMap(HttpServer.HttpServer, (server) =>
      server.address._tag === "TcpAddress" ? Effect.succeed(server.address.port) : Effect.dieMessage("expected a TCP address"))
  )
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    ready: () => runtime.runPromise(Effect.flatMap(ModelRegistry, (registry) => Effect.map(registry.ready, (engines) => engines[0]!))),
    close: () => runtime.dispose()
  }
}

/** Starts the real HTTP server on 127.0.0.1:0 in front of `backend`, once its model is loaded. */
export const startServer = async <E extends EngineStartFailed>(
  backend: Layer.Layer<Backend, E>,
  options: TestServerOptions = {}
): Promise<TestServer> => {
  const server = await startListening(backend, options)
  const engine = await server.ready()
  return { url: server.url, port: server.port, baseURL: `${server.url}/v1`, engine, close: server.close }
}

export interface HealthBody {
  readonly status: string
  readonly slots: { readonly total: number; readonly free: number }
  readonly queue: { readonly length: number; readonly limit: number }
}

export const health = async (server: { readonly url: string }): Promise<{ readonly status: number; readonly body: HealthBody }> => {
  const response = await fetch(`${server.url}/health`)
  return { status: response.status, body: (await response.json()) as HealthBody }
}

/** Polls `/health` until `predicate` holds; fails the test after `attempts` polls. */
export const waitForHealth = async (
  server: { readonly url: string },
  predicate: (body: HealthBody) => boolean,
  attempts = 400
): Promise<HealthBody> => {
  let last: HealthBody | undefined
  for (let attempt = 0; attempt < attempts; attempt++) {
    last = (await health(server)).body
    if (predicate(last)) return last
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`health never matched; last: ${JSON.stringify(last)}`)
}

export const postJson = (server: { readonly url: string }, path: string, body: unknown, init: RequestInit = {}) =>
  fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
    ...init
  })

/** The `data:` payloads of an SSE body, in order. */
export const sseData = (text: string): Array<string> =>
  text.split("\n\n").filter((frame) => frame.startsWith("data: ")).map((frame) => frame.slice("data: ".length))

/** Reads an SSE response until its first `data:` frame arrives (the request holds a slot by then). */
export const firstSseFrame = async (response: Response): Promise<ReadableStreamDefaultReader<Uint8Array>> => {
  const reader = response.body!.getReader()
  let text = ""
  while (!text.includes("\n\n")) {
    const { done, value } = await reader.read()
    if (done) throw new Error(`stream ended before its first frame: ${text}`)
    text += new TextDecoder().decode(value)
  }
  return reader
}

/** Reads the rest of a stream as text. */
export const readAll = async (reader: ReadableStreamDefaultReader<Uint8Array>): Promise<string> => {
  const decoder = new TextDecoder()
  let text = ""
  while (true) {
    const { done, value } = await reader.read()
    if (done) return text + decoder.decode()
    text += decoder.decode(value, { stream: true })
  }
}

/**
 * Sends `head` (request line and headers, maybe a little body) on a raw socket and resolves with what the
 * server answers before it stops; `rest`, if given, is written after the response has started arriving.
 */
export const rawExchange = (port: number, head: string | Uint8Array, options: { readonly keepWriting?: Uint8Array } = {}) =>
  new Promise<string>((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1")
    let received = ""
    let settled = false
    const finish = () => {
      if (settled) return
      settled = true
      socket.destroy()
      resolve(received)
    }
    socket.on("data", (data) => {
      received += data.toString("latin1")
      const headerEnd = received.indexOf("\r\n\r\n")
      if (headerEnd === -1) return
      const length = /content-length: (\d+)/i.exec(received.slice(0, headerEnd))
      if (length !== null && received.length >= headerEnd + 4 + Number(length[1])) finish()
    })
    socket.on("end", finish)
    socket.on("close", finish)
    socket.on("error", (error) => (received === "" ? reject(error) : finish()))
    socket.write(head)
    if (options.keepWriting !== undefined) socket.write(options.keepWriting)
  })

/** Status code of a raw HTTP response text. */
export const rawStatus = (response: string): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? "0")
