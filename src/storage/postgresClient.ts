import type { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { PgClient } from "@effect/sql-pg"
import { type Layer, Redacted } from "effect"

/** How the replica's shared-state pool connects to Postgres. */
export interface PostgresClientOptions {
  /** Pool size; one connection is held for the replica's session turn locks. Default 16. */
  readonly maxConnections?: number | undefined
}

/** Whether a store's location is a Postgres URL (the state a cluster shares) rather than a SQLite file. */
export const isPostgresUrl = (location: string): boolean => /^postgres(ql)?:\/\//.test(location)

const pools = new Map<string, Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, SqlError>>()

/**
 * A PgClient (and SqlClient) on `url`, for the state replicas share: keys, tenants, sessions, rate limits. The same
 * URL and options give the same layer value, so the stores of one server built together share one pool.
 */
export const postgresClientLayer = (url: string, options: PostgresClientOptions = {}) => {
  const maxConnections = options.maxConnections ?? 16
  const key = `${maxConnections} ${url}`
  const existing = pools.get(key)
  if (existing !== undefined) return existing
  const layer = PgClient.layer({ url: Redacted.make(url), maxConnections, applicationName: "weft" })
  pools.set(key, layer)
  return layer
}
