import * as os from "node:os"
import { RunnerAddress, Sharding } from "@effect/cluster"
import { HttpClient, HttpServer } from "@effect/platform"
import { NodeClusterSocket, NodeHttpClient } from "@effect/platform-node"
import { PgClient } from "@effect/sql-pg"
import { Duration, Effect, Either, Layer, Option, Redacted, Ref, Stream } from "effect"
import type { WeftSettings } from "../config/WeftSettings.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { ChatSession, SessionOwner } from "./ChatSessionEntity.js"
import { ClusterGate } from "./ClusterGate.js"
import type { ClusterRouting } from "./ClusterGate.js"
import { forwardableHeaders, forwardedResponse, relay, relayResponse, TurnNotRelayed } from "./ForwardedResponse.js"
import type { ForwardedRequest } from "./ForwardedResponse.js"
import { ReplicaLoad } from "./ReplicaLoad.js"

/** How long a turn waits to learn its session's owner: a dead owner's shards move within about 20 s. */
const locateLimit = Duration.seconds(30)
/** The pause before a turn is sent again to its session's owner after the first owner was gone before answering. */
const retryAfter = Duration.millis(500)

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

/** The chat-session entity: a session whose shard this replica owns answers that its turns run here. */
const chatSessionEntity = (owner: SessionOwner) => ChatSession.toLayer(Effect.succeed({ Locate: () => Effect.succeed(owner) }))

/**
 * The routing this replica installs in the `ClusterGate` while it is a runner. A forwarded request's owner may take up
 * to `silence` without sending anything: longer than a request may wait there for a slot.
 */
const routing = (silence: Duration.Duration) =>
  Effect.gen(function*() {
    const sessions = yield* ChatSession.client
    const load = yield* ReplicaLoad
    const client = yield* HttpClient.HttpClient
    const locate = (sessionId: string) =>
      sessions(sessionId).Locate().pipe(
        Effect.mapError((error) => new TurnNotRelayed({ message: error.message })),
        Effect.timeoutFail({ duration: locateLimit, onTimeout: () => new TurnNotRelayed({ message: `no replica took session ${sessionId} within ${Duration.format(locateLimit)}` }) })
      )
    /**
     * What `replica` at `url` answers to `forwarded`, from its head on; none when it did not run the request: it could
     * not be reached, sent no head for `silence`, or refused it with a 503 (shutting down, its model loading).
     */
    const answerOf = (url: string, replica: string, forwarded: ForwardedRequest) =>
      relayResponse(url, replica, forwarded).pipe(
        Effect.timeoutFail({ duration: silence, onTimeout: () => new TurnNotRelayed({ message: `${replica} sent no answer for ${Duration.format(silence)}` }) }),
        Effect.either,
        Effect.flatMap((answer) => {
          if (Either.isLeft(answer)) return Effect.as(Effect.logWarning("A replica did not take a forwarded request", { replica, error: answer.left.message }), Option.none())
          if (answer.right.head.status !== 503) return Effect.succeed(Option.some(answer.right.stream))
          return Effect.as(Effect.ignore(Stream.runDrain(answer.right.stream)), Option.none())
        })
      )
    /**
     * A session turn, sent over HTTP to the replica owning the session; once more, to the owner by then, when the first
     * did not run it (its shards were moving, or it had just died).
     */
    const sessionTurn = (sessionId: string, forwarded: ForwardedRequest) =>
      Effect.gen(function*() {
        const owner = yield* locate(sessionId)
        const answer = yield* answerOf(owner.url, owner.replica, forwarded)
        if (Option.isSome(answer)) return answer.value
        yield* Effect.sleep(retryAfter)
        const next = yield* locate(sessionId)
        return relay(next.url, next.replica, forwarded)
      }).pipe(Stream.unwrap)
    const forward: ClusterRouting["forward"] = (path, requestHeaders, body) =>
      Effect.gen(function*() {
        const headers = forwardableHeaders(requestHeaders)
        const forwarded = { path, headers, body: JSON.stringify(body) }
        const sessionId = sessionIdOf(path, body, headers)
        if (sessionId !== undefined) return Option.some(yield* forwardedResponse(sessionTurn(sessionId, forwarded), silence))
        const model = typeof body === "object" && body !== null && "model" in body && typeof body.model === "string" ? body.model : undefined
        const peer = yield* load.pick(model)
        if (Option.isNone(peer)) return Option.none()
        // A peer that does not take the request leaves it to this replica (a 404 when the model is nowhere else).
        const answer = yield* answerOf(peer.value.url, peer.value.replica, forwarded)
        if (Option.isNone(answer)) return Option.none()
        return Option.some(yield* forwardedResponse(answer.value, silence))
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
      const host = advertisedHost(settings)
      const port = server.address._tag === "TcpAddress" ? server.address.port : settings.port
      const runner = RunnerAddress.make(host, settings.clusterPort)
      const replica = `${host}:${settings.clusterPort}`
      const install = Layer.scopedDiscard(
        Effect.gen(function*() {
          const gate = yield* ClusterGate
          const routes = yield* routing(Duration.millis((settings.timeoutQueueMs ?? 60_000) + 30_000))
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
      const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`
      return install.pipe(
        Layer.provide(NodeHttpClient.layerUndici),
        Layer.provide(ReplicaLoad.Default({ replica, url })),
        Layer.provide(chatSessionEntity(new SessionOwner({ url, replica }))),
        Layer.provideMerge(sharding),
        Layer.provide(PgClient.layer({ url: Redacted.make(settings.cluster) }))
      )
    })
  ).pipe(Layer.orDie)

export { Sharding }
