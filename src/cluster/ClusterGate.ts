import type { HttpServerResponse } from "@effect/platform"
import { HttpServerRequest } from "@effect/platform"
import { Effect, Layer, Option, Ref } from "effect"
import type { Scope } from "effect"
import type { ReplicaUnavailable } from "./ClusterErrors.js"

/** The header a replica sets on a request it forwards, so the receiver runs it itself instead of forwarding it again. */
export const forwardedHeader = "x-weft-forwarded"

/** Where a generation request runs: the replica that owns its session, or the least loaded one. */
export interface ClusterRouting {
  /** The response of the replica that served `body` (`path` is the endpoint); none when this replica should serve it. */
  readonly forward: (path: string, headers: HttpServerRequest.HttpServerRequest["headers"], body: unknown) => Effect.Effect<Option.Option<HttpServerResponse.HttpServerResponse>, ReplicaUnavailable, Scope.Scope>
}

/**
 * The cluster's routing, once this replica's runner has joined; empty before it has and after it has left (during
 * shutdown), and always without `--cluster`: requests are then served here. The HTTP server is built before the runner
 * (the runner's entities call back into it), so the routes find the routing through this gate rather than a layer.
 */
export class ClusterGate extends Effect.Service<ClusterGate>()("weft/ClusterGate", {
  effect: Effect.map(Ref.make(Option.none<ClusterRouting>()), (routing) => ({ routing }) as const)
}) {
  static readonly layer: Layer.Layer<ClusterGate> = ClusterGate.Default
}

/**
 * The cluster's answer to a generation request whose JSON body is `body`, when another replica should serve it; none
 * outside a cluster, for a request already forwarded to this replica, and when this replica should serve it. The
 * relayed body streams within the request's scope.
 */
export const clusterForward = (body: unknown): Effect.Effect<Option.Option<HttpServerResponse.HttpServerResponse>, ReplicaUnavailable, HttpServerRequest.HttpServerRequest | Scope.Scope> =>
  Effect.gen(function*() {
    const gate = yield* Effect.serviceOption(ClusterGate)
    if (Option.isNone(gate)) return Option.none()
    const request = yield* HttpServerRequest.HttpServerRequest
    if (request.headers[forwardedHeader] !== undefined) return Option.none()
    const routing = yield* Ref.get(gate.value.routing)
    if (Option.isNone(routing)) return Option.none()
    return yield* routing.value.forward(new URL(request.url, "http://weft").pathname, request.headers, body)
  })
