// The SQL backends Weft's stores run on, as one table for tests that run the same cases on each: SQLite (one machine)
// and Postgres (the state a cluster's replicas share). Postgres is skipped only outside CI on a machine without it.
import type { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { postgresClientLayer } from "../../src/storage/postgresClient.js"
import { postgresAvailable, startPostgres, type TestPostgres } from "./postgres.js"

export interface StoreBackend {
  readonly name: "sqlite" | "postgres"
  /** Whether this machine runs it: SQLite always, Postgres where installed and always in CI. */
  readonly available: boolean
  /** Starts what the backend needs (call in `beforeAll`). */
  readonly setup: () => Promise<void>
  readonly teardown: () => Promise<void>
  /** A new empty database: a SQLite file or a Postgres URL. Two layers on the same one are two replicas. */
  readonly freshDatabase: () => string
  readonly sqlLayer: (database: string) => Layer.Layer<SqlClient.SqlClient>
}

const sqlite: StoreBackend = {
  name: "sqlite",
  available: true,
  setup: async () => {},
  teardown: async () => {},
  freshDatabase: () => path.join(fs.mkdtempSync(path.join(os.tmpdir(), "weft-store-")), "store.sqlite"),
  sqlLayer: (database) => Layer.orDie(SqliteClient.layer({ filename: database }))
}

const postgres = (): StoreBackend => {
  let server: TestPostgres | undefined
  let databases = 0
  return {
    name: "postgres",
    available: postgresAvailable() || process.env.CI !== undefined,
    setup: async () => {
      server = await startPostgres()
    },
    teardown: async () => {
      await server?.stop()
    },
    freshDatabase: () => {
      if (server === undefined) throw new Error("Postgres is not started: call setup() in beforeAll")
      databases += 1
      return server.createDatabase(`store_${databases}`)
    },
    sqlLayer: (database) => Layer.orDie(postgresClientLayer(database))
  }
}

/** SQLite and a Postgres of its own for this test file. */
export const storeBackends = (): ReadonlyArray<StoreBackend> => [sqlite, postgres()]
