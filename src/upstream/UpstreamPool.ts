import { NodeHttpClient } from "@effect/platform-node"
import type { HttpClient } from "@effect/platform"
import { Effect, Ref } from "effect"
import { Agent } from "undici"

/** How an upstream's connections are kept. */
export interface PoolSettings {
  /** Connections to the origin at most. */
  readonly connections: number
  /** How long an idle connection stays open for the next request. */
  readonly keepAliveMs: number
  readonly connectMs: number
}

export const defaultPoolSettings = { connections: 16, keepAliveMs: 30_000 } as const

/** An upstream origin's pool as `/admin/upstreams` and the pool gauges report it. */
export interface PoolStats {
  /** Connections open. */
  readonly connected: number
  /** Open connections idle, ready for the next request. */
  readonly free: number
  /** Requests waiting for a connection. */
  readonly queued: number
  /** Requests on a connection now. */
  readonly running: number
  /** Requests sent since start. */
  readonly requests: number
  /** Connections opened since start. */
  readonly connects: number
  /** Requests that went out on a connection opened for an earlier one. */
  readonly reused: number
}

/**
 * One upstream origin's connections: an undici `Agent` (bounded, keep-alive) behind `@effect/platform`'s `HttpClient`,
 * closed with the scope. Requests sent and connections opened are counted (undici emits `connect` per new
 * connection), so reuse is requests minus new connections.
 */
export const makeUpstreamPool = (origin: string, settings: PoolSettings) =>
  Effect.gen(function*() {
    const requests = yield* Ref.make(0)
    const connects = yield* Ref.make(0)
    const agent = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const created = new Agent({
          connections: settings.connections,
          keepAliveTimeout: settings.keepAliveMs,
          keepAliveMaxTimeout: Math.max(settings.keepAliveMs, 1),
          connect: { timeout: settings.connectMs }
        })
        // undici's event callbacks run outside any fiber: the count goes through the Ref like every other update.
        created.on("connect", () => Effect.runSync(Ref.update(connects, (count) => count + 1)))
        return created
      }),
      (created) => Effect.promise(() => created.destroy())
    )
    const client: HttpClient.HttpClient = NodeHttpClient.makeUndici(agent)
    const stats: Effect.Effect<PoolStats> = Effect.gen(function*() {
      const pool = agent.stats[origin]
      const sent = yield* Ref.get(requests)
      const opened = yield* Ref.get(connects)
      // With one connection undici uses a `Client` (a boolean `connected`, no `free`/`queued`) instead of a `Pool`.
      const connected = pool === undefined ? 0 : Number(pool.connected)
      const running = pool?.running ?? 0
      return {
        connected,
        free: pool === undefined ? 0 : "free" in pool ? pool.free : Math.max(0, connected - running),
        queued: pool === undefined ? 0 : "queued" in pool ? pool.queued : Math.max(0, pool.pending - running),
        running,
        requests: sent,
        connects: opened,
        reused: Math.max(0, sent - opened)
      }
    })
    return {
      client,
      /** Counts a request about to go out on this pool. */
      sent: Ref.update(requests, (count) => count + 1),
      stats
    } as const
  })

export type UpstreamPool = Effect.Effect.Success<ReturnType<typeof makeUpstreamPool>>
