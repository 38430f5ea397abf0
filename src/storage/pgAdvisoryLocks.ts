import type { SqlClient } from "@effect/sql"
import type { Connection } from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import { Duration, Effect, Exit, Option, Schedule, Scope, SynchronizedRef } from "effect"

/**
 * Takes Postgres's transaction-level advisory lock `name`: run inside a transaction, it waits while another
 * transaction holds it and is released when this one ends.
 */
export const lockForTransaction = (sql: SqlClient.SqlClient, name: string) => sql`SELECT pg_advisory_xact_lock(hashtextextended(${name}, 0))`

/** Locks held across replicas, by name. */
export interface AdvisoryLocks {
  /** Holds lock `name` until the caller's scope closes, waiting while another replica holds it. */
  readonly lock: (name: string) => Effect.Effect<void, SqlError, Scope.Scope>
}

interface Held {
  readonly connection: Connection
  readonly scope: Scope.CloseableScope
}

/** How often a replica asks again for a lock another replica holds. */
const pollInterval = Duration.millis(50)

/**
 * Postgres session-level advisory locks, all taken on one connection this replica keeps for them. Postgres releases
 * a connection's advisory locks when it closes, so a replica that dies (or loses its connection) frees its locks at
 * once, without a lease to wait out. Session-level locks are re-entrant on one connection, so callers must hold an
 * in-process lock per name first: this only excludes other replicas.
 */
export const makePgAdvisoryLocks = (sql: SqlClient.SqlClient): Effect.Effect<AdvisoryLocks, never, Scope.Scope> =>
  Effect.gen(function*() {
    const current = yield* SynchronizedRef.make(Option.none<Held>())
    const close = (held: Held) => Scope.close(held.scope, Exit.void)
    yield* Effect.addFinalizer(() => Effect.flatMap(SynchronizedRef.get(current), Option.match({ onNone: () => Effect.void, onSome: close })))

    const connection = SynchronizedRef.modifyEffect(current, (held) =>
      Option.match(held, {
        onSome: (one) => Effect.succeed([one, held] as const),
        onNone: () =>
          Effect.gen(function*() {
            const scope = yield* Scope.make()
            const reserved = yield* Scope.extend(sql.reserve, scope).pipe(Effect.onError(() => Scope.close(scope, Exit.void)))
            const one: Held = { connection: reserved, scope }
            return [one, Option.some(one)] as const
          })
      }))

    // A failed connection is dropped (its locks are gone with it on the server) and the next call reserves another.
    const run = (statement: string, name: string) =>
      Effect.flatMap(connection, (held) =>
        held.connection.execute(statement, [name], undefined).pipe(
          Effect.tapError(() =>
            Effect.zipRight(
              SynchronizedRef.update(current, (now) => (Option.isSome(now) && now.value === held ? Option.none() : now)),
              close(held)
            )
          )
        ))

    const tryLock = Effect.fn("AdvisoryLocks.tryLock")(function*(name: string) {
      const rows = yield* run("SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS locked", name)
      return rows[0]?.locked === true
    })

    const unlock = (name: string) =>
      run("SELECT pg_advisory_unlock(hashtextextended($1, 0))", name).pipe(
        Effect.catchAll((error) => Effect.logWarning("Releasing an advisory lock failed (its connection's locks are gone with it)", error))
      )

    // Each try is uninterruptible with its release registered, so an interrupted waiter never leaves a lock behind;
    // the waits between tries stay interruptible.
    const attempt = (name: string) =>
      Effect.uninterruptible(Effect.tap(tryLock(name), (locked) => (locked ? Effect.addFinalizer(() => unlock(name)) : Effect.void)))

    const lock = (name: string) =>
      attempt(name).pipe(Effect.repeat({ schedule: Schedule.spaced(pollInterval), until: (locked) => locked }), Effect.asVoid)

    return { lock } satisfies AdvisoryLocks
  })
