import { SqlClient } from "@effect/sql"
import { Effect, Option, Ref, Schedule } from "effect"
import { ModelRegistry } from "../host/ModelRegistry.js"

/** How busy a replica is: requests waiting for a slot, and slots free. */
export interface Load {
  readonly queued: number
  readonly free: number
}

/** A replica of the cluster as it last published itself. */
export interface PeerLoad extends Load {
  readonly replica: string
  readonly url: string
}

/** Lower is less busy: a waiting request counts against a replica as much as a free slot counts for it. */
const pressure = (load: Load) => load.queued - load.free

/** The less busy of the peers than `local`, least busy first; none when this replica is (one of) the least busy. */
export const lessBusyPeer = (local: Load, peers: ReadonlyArray<PeerLoad>): Option.Option<PeerLoad> => {
  const best = peers.reduce<PeerLoad | undefined>((least, peer) => (least === undefined || pressure(peer) < pressure(least) ? peer : least), undefined)
  return best !== undefined && pressure(best) < pressure(local) ? Option.some(best) : Option.none()
}

/** This replica's load: the queues and free slots of the engines it serves. */
const localLoad = Effect.flatMap(ModelRegistry, (registry) =>
  Effect.flatMap(registry.engines, (engines) =>
    Effect.map(Effect.forEach(engines, (engine) => engine.scheduler.stats), (stats) =>
      stats.reduce<Load>((sum, one) => ({ queued: sum.queued + one.queued, free: sum.free + one.slots.free }), { queued: 0, free: 0 }))))

/** A published row older than this is a replica that stopped (or cannot reach Postgres): it gets no requests. */
const staleAfterMs = 5000

/**
 * Every replica's queue depth and free slots, through a Postgres table each replica refreshes every second; requests
 * without a session go to the least busy. Between refreshes, a request sent to a peer counts against it here.
 */
export class ReplicaLoad extends Effect.Service<ReplicaLoad>()("weft/ReplicaLoad", {
  scoped: Effect.fn("ReplicaLoad.make")(function*(self: { readonly replica: string; readonly url: string }) {
    const sql = yield* SqlClient.SqlClient
    const registry = yield* ModelRegistry
    // Several replicas starting at once race to create the table; the loser's CREATE fails once, then finds it.
    yield* sql`CREATE TABLE IF NOT EXISTS weft_replica_load (
      replica TEXT PRIMARY KEY,
      url TEXT NOT NULL,
      queued INTEGER NOT NULL,
      free_slots INTEGER NOT NULL,
      updated_at TIMESTAMPTZ NOT NULL
    )`.pipe(Effect.retry(Schedule.recurs(3)), Effect.orDie)
    /** The other replicas' last published load; written by the refresh loop and by `pick`. */
    const peers = yield* Ref.make<ReadonlyArray<PeerLoad>>([])
    const current = Effect.provideService(localLoad, ModelRegistry, registry)

    const refresh = Effect.gen(function*() {
      const load = yield* current
      yield* sql`INSERT INTO weft_replica_load (replica, url, queued, free_slots, updated_at)
        VALUES (${self.replica}, ${self.url}, ${load.queued}, ${load.free}, now())
        ON CONFLICT (replica) DO UPDATE SET url = EXCLUDED.url, queued = EXCLUDED.queued, free_slots = EXCLUDED.free_slots, updated_at = now()`
      const rows = yield* sql<{ replica: string; url: string; queued: number; free_slots: number }>`
        SELECT replica, url, queued, free_slots FROM weft_replica_load
        WHERE replica <> ${self.replica} AND updated_at > now() - make_interval(secs => ${staleAfterMs / 1000})`
      yield* Ref.set(peers, rows.map((row) => ({ replica: row.replica, url: row.url, queued: Number(row.queued), free: Number(row.free_slots) })))
    })
    yield* refresh.pipe(
      Effect.catchAll((error) => Effect.logWarning("Publishing this replica's load failed", error)),
      Effect.repeat(Schedule.spaced("1 second")),
      Effect.forkScoped
    )
    yield* Effect.addFinalizer(() => Effect.ignore(sql`DELETE FROM weft_replica_load WHERE replica = ${self.replica}`))

    /** The peer a request without a session should go to, when one is less busy than this replica. */
    const pick = Effect.gen(function*() {
      const local = yield* current
      const chosen = lessBusyPeer(local, yield* Ref.get(peers))
      if (Option.isSome(chosen)) {
        const sent = chosen.value
        yield* Ref.update(peers, (list) =>
          list.map((peer) => (peer.replica !== sent.replica ? peer : peer.free > 0 ? { ...peer, free: peer.free - 1 } : { ...peer, queued: peer.queued + 1 })))
      }
      return chosen
    })
    return { pick, peers: Ref.get(peers) } as const
  })
}) {}
