import { PgClient } from "@effect/sql-pg"
import { SqlClient } from "@effect/sql"
import { Effect, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { postgresAvailable, startPostgres, type TestPostgres } from "../support/postgres.js"

// Outside CI a machine without Debian's postgresql package skips the Postgres tests; CI installs it, so there they run.
describe.skipIf(!postgresAvailable() && process.env.CI === undefined)("test Postgres", () => {
  let postgres: TestPostgres
  beforeAll(async () => {
    postgres = await startPostgres()
  }, 90_000)
  afterAll(() => postgres?.stop())

  it("starts a server that @effect/sql-pg can query, with a database per test on demand", async () => {
    const other = postgres.createDatabase("other")
    const query = (url: string) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        return yield* sql<{ readonly answer: number; readonly db: string }>`SELECT 41 + 1 AS answer, current_database() AS db`
      }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(url) })), Effect.scoped, Effect.runPromise)
    expect(await query(postgres.url)).toEqual([{ answer: 42, db: "weft" }])
    expect(await query(other)).toEqual([{ answer: 42, db: "other" }])
  })
})
