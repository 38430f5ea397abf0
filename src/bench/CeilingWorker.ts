import { NodeRuntime } from "@effect/platform-node"
import { Effect, Queue } from "effect"
import { serveCeiling } from "./DecodeCeiling.js"
import type { CeilingReply, CeilingRequest } from "./DecodeCeiling.js"
import type { EngineBenchConfig } from "./InProcessTarget.js"

// The decode-ceiling process (see `makeDecodeCeiling`): forked by the bench, asked over IPC, ended with it.
const config = JSON.parse(process.argv[2] ?? "{}") as EngineBenchConfig

const program = Effect.gen(function*() {
  const requests = yield* Queue.unbounded<CeilingRequest>()
  process.on("message", (request: CeilingRequest) => Queue.unsafeOffer(requests, request))
  process.on("disconnect", () => process.exit(0))
  return yield* serveCeiling(config, requests, (reply: CeilingReply) => process.send?.(reply))
})

NodeRuntime.runMain(Effect.scoped(program))
