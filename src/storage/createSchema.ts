import type { SqlClient } from "@effect/sql"
import type { Statement } from "@effect/sql/Statement"
import { Effect } from "effect"
import { lockForTransaction } from "./pgAdvisoryLocks.js"

/**
 * Runs a store's `CREATE … IF NOT EXISTS` statements. On Postgres, replicas starting together on an empty database
 * would race (`IF NOT EXISTS` is not atomic there: the loser fails on a catalog unique index), so they run one
 * replica at a time, in a transaction under one advisory lock. A failure is a start-up failure (a defect).
 */
export const createSchema = (sql: SqlClient.SqlClient, statements: ReadonlyArray<Statement<unknown>>): Effect.Effect<void> =>
  sql.onDialectOrElse({
    pg: () => sql.withTransaction(Effect.zipRight(lockForTransaction(sql, "weft/schema"), Effect.all(statements, { discard: true }))),
    orElse: () => Effect.all(statements, { discard: true })
  }).pipe(Effect.orDie)
