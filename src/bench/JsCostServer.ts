import { HttpServer } from "@effect/platform"
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Logger, LogLevel, Scheduler } from "effect"
import { SimBackend } from "../engine/SimBackend.js"
import { schedulerLayer } from "../host/LocalEngine.js"
import { serverLayer } from "../layers.js"
import type { JsCostReply } from "./JsCost.js"

// The JS-cost server (see `measureJsCost`): Weft's whole HTTP API over SimBackend, forked by the bench with the
// backend's ms per token as its argument; it tells its URL once listening, then its CPU time whenever asked, and ends
// with the bench.
const tokenLatency = Number(process.argv[2] ?? "1")

// Effect's runtime asks its scheduler whether to yield before every operation a fiber runs: counting the questions
// counts the operations.
let effectSteps = 0
const countingScheduler: Scheduler.Scheduler = {
  scheduleTask: (task, priority) => Scheduler.defaultScheduler.scheduleTask(task, priority),
  shouldYield: (fiber) => {
    effectSteps++
    return Scheduler.defaultScheduler.shouldYield(fiber)
  }
}

const server = serverLayer(
  [{ engine: schedulerLayer(SimBackend.layer({ parallel: 4, contextSize: 4096, tokenLatency })) }],
  { host: "127.0.0.1", port: 0, maxBodyBytes: 4 * 1024 * 1024, shutdownGraceMs: 0 },
  { databasePath: ":memory:" }
).pipe(Layer.provide(Logger.minimumLogLevel(LogLevel.Warning)), Layer.provide(Layer.setScheduler(countingScheduler)))

const program = Effect.gen(function*() {
  const { address } = yield* HttpServer.HttpServer
  if (address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP address")
  const send = (reply: JsCostReply) => process.send?.(reply)
  process.on("message", () => send({ _tag: "Cpu", usage: process.cpuUsage(), effectSteps }))
  process.on("disconnect", () => process.exit(0))
  send({ _tag: "Listening", url: `http://127.0.0.1:${address.port}` })
  return yield* Effect.never
})

NodeRuntime.runMain(Effect.provide(program, server))
