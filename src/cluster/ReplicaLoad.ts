import { SqlClient } from "@effect/sql"
import { Effect, Option, Ref, Schedule, Schema } from "effect"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { adapterOf } from "../http/ModelRoute.js"

/** How busy a replica is: requests waiting for a slot, and slots free. */
export interface Load {
  readonly queued: number
  readonly free: number
}

/** A replica of the cluster as it last published itself. */
export interface PeerLoad extends Load {
  readonly replica: string
  readonly url: string
  /** The ids of the models it serves. */
  readonly models: ReadonlyArray<string>
}

/** Whether a replica serving `models` serves a request for `model`: itself, or as `base:adapter` on a model it serves. */
export const serves = (models: ReadonlyArray<string>, model: string): boolean => {
  if (models.includes(model)) return true
  const adapter = adapterOf(model)
  return adapter !== undefined && models.includes(adapter.model)
}

/** Lower is less busy: a waiting request counts against a replica as much as a free slot counts for it. */
const pressure = (load: Load) => load.queued - load.free

const leastBusy = (peers: ReadonlyArray<PeerLoad>) =>
  peers.reduce<PeerLoad | undefined>((least, peer) => (least === undefined || pressure(peer) < pressure(least) ? peer : least), undefined)

/** The less busy of the peers than `local`, least busy first; none when this replica is (one of) the least busy. */
export const lessBusyPeer = (local: Load, peers: ReadonlyArray<PeerLoad>): Option.Option<PeerLoad> => {
  const best = leastBusy(peers)
  return best !== undefined && pressure(best) < pressure(local) ? Option.some(best) : Option.none()
}

/**
 * Where a request for `model` (none: the default model) goes, from a replica serving `localModels` under `local` load:
 * the least busy peer serving it when this replica does not serve it (a model loaded on one replica, a fine-tuned model
 * on the replica that trained it), else a less busy peer serving it too, else none (served here).
 */
export const peerFor = (model: string | undefined, local: Load, localModels: ReadonlyArray<string>, peers: ReadonlyArray<PeerLoad>): Option.Option<PeerLoad> => {
  if (model === undefined) return lessBusyPeer(local, peers)
  const holders = peers.filter((peer) => serves(peer.models, model))
  if (serves(localModels, model)) return lessBusyPeer(local, holders)
  return Option.fromNullable(leastBusy(holders))
}

/** This replica's load: the queues and free slots of the engines it serves. */
const localLoad = Effect.flatMap(ModelRegistry, (registry) =>
  Effect.flatMap(registry.engines, (engines) =>
    Effect.map(Effect.forEach(engines, (engine) => engine.scheduler.stats), (stats) =>
      stats.reduce<Load>((sum, one) => ({ queued: sum.queued + one.queued, free: sum.free + one.slots.free }), { queued: 0, free: 0 }))))

const decodeModelIds = Schema.decodeUnknownOption(Schema.parseJson(Schema.Array(Schema.String)))

/** The model ids a replica published; none when the row is not a JSON list of strings. */
const modelIdsOf = (json: string): ReadonlyArray<string> => Option.getOrElse(decodeModelIds(json), () => [])

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
    // Tables made before replicas published their models get the column.
    yield* sql`ALTER TABLE weft_replica_load ADD COLUMN IF NOT EXISTS models TEXT NOT NULL DEFAULT '[]'`.pipe(Effect.retry(Schedule.recurs(3)), Effect.orDie)
    /** The other replicas' last published load; written by the refresh loop and by `pick`. */
    const peers = yield* Ref.make<ReadonlyArray<PeerLoad>>([])
    const current = Effect.provideService(localLoad, ModelRegistry, registry)
    /** The models this replica serves (loaded or loading), by id. */
    const localModels = Effect.map(registry.models, (models) => models.flatMap((model) => (model.id === undefined ? [] : [model.id])))

    const refresh = Effect.gen(function*() {
      const load = yield* current
      const models = JSON.stringify(yield* localModels)
      yield* sql`INSERT INTO weft_replica_load (replica, url, queued, free_slots, models, updated_at)
        VALUES (${self.replica}, ${self.url}, ${load.queued}, ${load.free}, ${models}, now())
        ON CONFLICT (replica) DO UPDATE SET url = EXCLUDED.url, queued = EXCLUDED.queued, free_slots = EXCLUDED.free_slots, models = EXCLUDED.models, updated_at = now()`
      const rows = yield* sql<{ replica: string; url: string; queued: number; free_slots: number; models: string }>`
        SELECT replica, url, queued, free_slots, models FROM weft_replica_load
        WHERE replica <> ${self.replica} AND updated_at > now() - make_interval(secs => ${staleAfterMs / 1000})`
      yield* Ref.set(peers, rows.map((row) => ({ replica: row.replica, url: row.url, queued: Number(row.queued), free: Number(row.free_slots), models: modelIdsOf(row.models) })))
    })
    yield* refresh.pipe(
      Effect.catchAll((error) => Effect.logWarning("Publishing this replica's load failed", error)),
      Effect.repeat(Schedule.spaced("1 second")),
      Effect.forkScoped
    )
    yield* Effect.addFinalizer(() => Effect.ignore(sql`DELETE FROM weft_replica_load WHERE replica = ${self.replica}`))

    /** The peer a request for `model` without a session should go to (`peerFor`); none: serve it here. */
    const pick = (model: string | undefined) => Effect.gen(function*() {
      const chosen = peerFor(model, yield* current, yield* localModels, yield* Ref.get(peers))
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
