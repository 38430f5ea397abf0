import { PgClient } from "@effect/sql-pg"
import { Redacted } from "effect"

/** How the replica's shared-state pool connects to Postgres. */
export interface PostgresClientOptions {
  /** Pool size; one connection is held for the replica's session turn locks. Default 16. */
  readonly maxConnections?: number | undefined
}

/** A PgClient (and SqlClient) on `url`, for the state replicas share: keys, tenants, sessions, rate limits. */
export const postgresClientLayer = (url: string, options: PostgresClientOptions = {}) =>
  PgClient.layer({ url: Redacted.make(url), maxConnections: options.maxConnections ?? 16, applicationName: "weft" })
