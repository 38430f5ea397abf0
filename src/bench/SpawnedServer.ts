import { spawn } from "node:child_process"
import * as net from "node:net"
import { fileURLToPath } from "node:url"
import { Effect, Schema } from "effect"
import type { Scope } from "effect"
import { awaitHealthy } from "./HttpTarget.js"
import type { EngineBenchConfig } from "./InProcessTarget.js"
import { exited, scopedChild } from "./ScopedChild.js"

/** `weft serve` could not be started for the bench. */
export class ServerStartFailed extends Schema.TaggedError<ServerStartFailed>()("ServerStartFailed", {
  message: Schema.String,
  output: Schema.String
}) {}

/** A `weft serve` child process and where it listens. */
export interface SpawnedServer {
  readonly baseUrl: string
  readonly pid: number | undefined
}

/** A free loopback port. */
export const freePort = Effect.async<number, ServerStartFailed>((resume) => {
  const server = net.createServer()
  server.once("error", (cause) => resume(Effect.fail(new ServerStartFailed({ message: cause.message, output: "" }))))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

const mainEntry = fileURLToPath(new URL("../main.ts", import.meta.url))

/**
 * Starts `weft serve` on the model in a child process (so the load generator's JS never runs on the server's event
 * loop), waits until `/health` is 200, and stops it with SIGTERM when the scope closes.
 */
export const spawnWeft = (
  config: EngineBenchConfig,
  extraArgs: ReadonlyArray<string> = [],
  env: Readonly<Record<string, string>> = {}
): Effect.Effect<SpawnedServer, ServerStartFailed, Scope.Scope> =>
  Effect.gen(function*() {
    const port = yield* freePort
    const args = [
      "--import",
      "tsx",
      mainEntry,
      "serve",
      "--model", config.modelPath,
      "--host", "127.0.0.1",
      "--port", String(port),
      "--parallel", String(config.parallel),
      "--ctx-size", String(config.contextSize),
      "--threads", String(config.threads),
      "--gpu", config.gpu === false ? "off" : "auto",
      "--flash-attention", config.flashAttention ? "on" : "off",
      "--max-queue", "1024",
      "--shutdown-grace", "0",
      ...(config.batchSize === undefined ? [] : ["--batch-size", String(config.batchSize)]),
      ...extraArgs
    ]
    const { child, output } = yield* scopedChild(
      () => spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } }),
      4000
    )
    const baseUrl = `http://127.0.0.1:${port}`
    yield* awaitHealthy(baseUrl, 120_000).pipe(
      Effect.raceFirst(
        Effect.flatMap(Effect.promise(() => exited(child)), () =>
          Effect.fail(new ServerStartFailed({ message: `weft serve exited with ${child.exitCode ?? child.signalCode}`, output: output() })))
      ),
      Effect.catchTag("ServerUnreachable", (error) => Effect.fail(new ServerStartFailed({ message: error.message, output: output() })))
    )
    return { baseUrl, pid: child.pid }
  })
