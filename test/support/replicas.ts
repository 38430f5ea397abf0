// Weft replicas as separate `weft serve` processes on loopback, for the cluster tests and the affinity bench.
import { spawn, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"

/** A free loopback port (free when asked; another process could take it before it is used). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

export interface ReplicaOptions {
  readonly name: string
  readonly modelPath: string
  /** `--cluster`; without it the replica runs alone. */
  readonly clusterUrl?: string | undefined
  /** The HTTP port (a restarted replica keeps its own); a free one when not given. */
  readonly port?: number | undefined
  readonly runnerPort?: number | undefined
  readonly dataDir?: string | undefined
  readonly args?: ReadonlyArray<string> | undefined
  /** Default `warn`. */
  readonly logLevel?: string | undefined
}

export interface Replica {
  readonly name: string
  readonly url: string
  readonly port: number
  readonly runnerPort: number
  readonly dataDir: string
  readonly child: ChildProcess
  /** Everything the process wrote, for a failing test's message. */
  readonly output: () => string
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>
  /** SIGTERM (graceful: hands its shards over, drains) or SIGKILL (a crash), then waits for the exit. */
  readonly stop: (signal?: "SIGTERM" | "SIGKILL") => Promise<void>
}

/** Starts `weft serve` on the tiny model and resolves once it serves (its banner is out). */
export const startReplica = async (options: ReplicaOptions): Promise<Replica> => {
  const port = options.port ?? (await freePort())
  const runnerPort = options.runnerPort ?? (await freePort())
  const dataDir = options.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), `weft-${options.name}-`))
  const args = [
    "--import", "tsx", "src/main.ts", "serve",
    "--model", options.modelPath, "--port", String(port), "--data-dir", dataDir,
    "--parallel", "2", "--ctx-size", "512", "--threads", "1", "--log-level", options.logLevel ?? "warn", "--shutdown-grace", "5s",
    ...(options.clusterUrl === undefined ? [] : ["--cluster", options.clusterUrl, "--cluster-port", String(runnerPort)]),
    ...(options.args ?? [])
  ]
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } })
  let output = ""
  child.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()))
  child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()))
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const deadline = Date.now() + 240_000
  while (!output.includes("Weft is serving")) {
    if (child.exitCode !== null) throw new Error(`replica ${options.name} exited with ${child.exitCode}:\n${output}`)
    if (Date.now() > deadline) {
      child.kill("SIGKILL")
      throw new Error(`replica ${options.name} did not start in 240 s:\n${output}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const stop = async (signal: "SIGTERM" | "SIGKILL" = "SIGTERM") => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal)
    const killed = await Promise.race([exited.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 30_000))])
    if (!killed) {
      child.kill("SIGKILL")
      await exited
    }
  }
  return { name: options.name, url: `http://127.0.0.1:${port}`, port, runnerPort, dataDir, child, output: () => output, exited, stop }
}

/** What a client saw of one request. */
export interface Seen {
  /** `ok`: a 200 that ended with `[DONE]`; `refused`: no HTTP answer (the replica was down); `hung`: no end within the client's limit. */
  readonly outcome: "ok" | "error-status" | "error-event" | "refused" | "cut" | "hung"
  readonly status?: number | undefined
  /** The error code of a failed answer, in-band or not. */
  readonly code?: string | undefined
  /** `x-weft-replica`: the replica that served a forwarded request (absent when the one asked served it). */
  readonly servedBy?: string | undefined
  readonly text: string
  readonly usage?: { readonly prompt_tokens: number; readonly completion_tokens: number; readonly prompt_tokens_details?: { readonly cached_tokens: number } } | undefined
}

/** POSTs a streaming chat completion and reads its event stream to the end (or `limitMs`, after which it counts as hung). */
export const streamChat = async (url: string, body: Record<string, unknown>, limitMs = 60_000): Promise<Seen> => {
  const controller = new AbortController()
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    controller.abort()
  }, limitMs)
  let status: number | undefined
  let servedBy: string | undefined
  let text = ""
  try {
    const response = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "weft-tiny-s42", stream: true, stream_options: { include_usage: true }, ...body }),
      signal: controller.signal
    })
    status = response.status
    servedBy = response.headers.get("x-weft-replica") ?? undefined
    const raw = await response.text()
    if (status !== 200) {
      const code = raw.startsWith("{") ? (JSON.parse(raw) as { error?: { code?: string } }).error?.code : `HTTP ${status} ${raw.slice(0, 80)}`
      return { outcome: "error-status", status, code, servedBy, text }
    }
    let usage: Seen["usage"]
    for (const line of raw.split("\n")) {
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue
      const frame = JSON.parse(line.slice(6)) as { error?: { code?: string }; usage?: Seen["usage"]; choices?: Array<{ delta?: { content?: string } }> }
      if (frame.error !== undefined) return { outcome: "error-event", status, code: frame.error.code, servedBy, text }
      if (frame.usage) usage = frame.usage
      text += frame.choices?.[0]?.delta?.content ?? ""
    }
    return { outcome: raw.includes("data: [DONE]") ? "ok" : "cut", status, servedBy, text, usage }
  } catch (error) {
    if (timedOut) return { outcome: "hung", status, servedBy, text }
    return { outcome: status === undefined ? "refused" : "cut", status, servedBy, text, code: String((error as { cause?: { code?: string } }).cause?.code ?? error) }
  } finally {
    clearTimeout(timer)
  }
}
