import * as os from "node:os"
import { RunnerAddress, Sharding } from "@effect/cluster"
import { HttpClient, HttpServer } from "@effect/platform"
import { NodeClusterSocket, NodeHttpClient } from "@effect/platform-node"
import { PgClient } from "@effect/sql-pg"
import { Duration, Effect, Layer, Option, Redacted, Ref, Stream } from "effect"
import type { WeftSettings } from "../config/WeftSettings.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { baseUrl } from "../http/ServerUrl.js"
import { ChatSession, OwnerAlive } from "./ChatSessionEntity.js"
import { ClusterGate } from "./ClusterGate.js"
import type { ClusterRouting } from "./ClusterGate.js"
import { forwardableHeaders, forwardedResponse, relay } from "./ForwardedResponse.js"
import { ReplicaLoad } from "./ReplicaLoad.js"

/** How often an owner signals it is still working on a turn, and how long a caller waits without a signal. */
const aliveEvery = Duration.seconds(2)
const silenceLimit = Duration.seconds(30)

const wildcard = (host: string) => host === "0.0.0.0" || host === "::"

/** The address other replicas reach this one at: `--cluster-host`, else `--host` (the machine's name for a wildcard). */
const advertisedHost = (settings: WeftSettings) => settings.clusterHost ?? (wildcard(settings.host) ? os.hostname() : settings.host)

/** The session a chat request continues, as `OpenAiRoutes` reads it: `session_id`, else the `X-Session-Id` header. */
const sessionIdOf = (path: string, body: unknown, headers: Readonly<Record<string, string>>): string | undefined => {
  if (path !== "/v1/chat/completions") return undefined
  const field = typeof body === "object" && body !== null && "session_id" in body ? body.session_id : undefined
  const id = typeof field === "string" ? field : headers["x-session-id"]
  return id === undefined || id === "" ? undefined : id
}

/**
 * The chat-session entity: this replica runs the turns of the sessions whose shards it owns, through its own HTTP
 * server (so they are served exactly as a request made here), streaming the response back with a tick while it works.
 */
const chatSessionEntity = (localUrl: string, replica: string) =>
  ChatSession.toLayer(
    Effect.succeed({
      Turn: (envelope) =>
        Stream.merge(relay(localUrl, replica, envelope.payload), Stream.tick(aliveEvery).pipe(Stream.as(new OwnerAlive())), { haltStrategy: "left" })
    }),
    // Turns of a session run one at a time, as on one machine.
    { concurrency: 1 }
  )

/** The routing this replica installs in the `ClusterGate` while it is a runner. */
const routing = Effect.gen(function*() {
  const sessions = yield* ChatSession.client
  const load = yield* ReplicaLoad
  const client = yield* HttpClient.HttpClient
  const forward: ClusterRouting["forward"] = (path, requestHeaders, body) =>
    Effect.gen(function*() {
      const headers = forwardableHeaders(requestHeaders)
      const forwarded = { path, headers, body: JSON.stringify(body) }
      const sessionId = sessionIdOf(path, body, headers)
      if (sessionId !== undefined) return Option.some(yield* forwardedResponse(sessions(sessionId).Turn(forwarded), silenceLimit))
      const peer = yield* load.pick
      if (Option.isNone(peer)) return Option.none()
      // A peer that cannot be reached before it answers leaves the request to this replica.
      return yield* forwardedResponse(relay(peer.value.url, peer.value.replica, forwarded), silenceLimit).pipe(
        Effect.map(Option.some),
        Effect.catchTag("ReplicaUnavailable", (error) =>
          Effect.as(Effect.logWarning("Forwarding to a less busy replica failed; serving here", { peer: peer.value.replica, error: error.message }), Option.none()))
      )
    }).pipe(Effect.provideService(HttpClient.HttpClient, client))
  return { forward } satisfies ClusterRouting
})

/**
 * Makes this replica a runner of the cluster whose storage is the `--cluster` Postgres database: runner and message
 * storage there, the runner listening on `--cluster-port`, chat sessions as entities, load published for the others.
 * Built after the HTTP server, so it is released before it: on shutdown the shards are handed over while the server
 * still finishes its requests, and what arrives meanwhile is served here.
 */
export const clusterRunnerLayer = (settings: WeftSettings & { readonly cluster: string }) =>
  Layer.unwrapEffect(
    Effect.gen(function*() {
      const server = yield* HttpServer.HttpServer
      // A replica joins once its models serve: shards it owned before would otherwise answer "model loading".
      yield* Effect.flatMap(ModelRegistry, (registry) => Effect.ignore(registry.ready))
      const localUrl = baseUrl(server.address)
      const host = advertisedHost(settings)
      const port = server.address._tag === "TcpAddress" ? server.address.port : settings.port
      const runner = RunnerAddress.make(host, settings.clusterPort)
      const replica = `${host}:${settings.clusterPort}`
      const install = Layer.scopedDiscard(
        Effect.gen(function*() {
          const gate = yield* ClusterGate
          const routes = yield* routing
          yield* Effect.acquireRelease(Ref.set(gate.routing, Option.some(routes)), () => Ref.set(gate.routing, Option.none()))
          yield* Effect.logInfo("joined the cluster").pipe(Effect.annotateLogs({ runner: replica }))
        })
      )
      const sharding = NodeClusterSocket.layer({
        storage: "sql",
        shardingConfig: {
          runnerAddress: Option.some(runner),
          runnerListenAddress: Option.some(RunnerAddress.make(settings.host, settings.clusterPort)),
          // A dead runner's shards move once its heartbeat is this old (the defaults are 10 s and 35 s). The refresh
          // interval is also the timeout of lock queries: shorter makes a busy database look like a lost one.
          shardLockRefreshInterval: Duration.seconds(5),
          // Each shard is a Postgres advisory lock taken and released over one connection: the default 300 made a
          // shard hand-over between live replicas time out under load, leaving its sessions unserved.
          shardsPerGroup: 64,
          shardLockExpiration: Duration.seconds(20),
          refreshAssignmentsInterval: Duration.seconds(1),
          runnerHealthCheckInterval: Duration.seconds(5),
          entityTerminationTimeout: Duration.millis(settings.shutdownGraceMs)
        }
      })
      return install.pipe(
        Layer.provide(NodeHttpClient.layerUndici),
        Layer.provide(ReplicaLoad.Default({ replica, url: `http://${host.includes(":") ? `[${host}]` : host}:${port}` })),
        Layer.provide(chatSessionEntity(localUrl, replica).pipe(Layer.provide(NodeHttpClient.layerUndici))),
        Layer.provideMerge(sharding),
        Layer.provide(PgClient.layer({ url: Redacted.make(settings.cluster) }))
      )
    })
  ).pipe(Layer.orDie)

export { Sharding }
