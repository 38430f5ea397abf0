// Session turns served with the Postgres session store (as a clustered replica has it) whose clients go away at any
// point, before the answer, mid-stream or mid-body, leave no cross-replica turn lock behind.
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postgresClientLayer } from "../../src/storage/postgresClient.js"
import { postgresAvailable, startPostgres, type TestPostgres } from "../support/postgres.js"
import { startServer, type TestServer } from "../support/testServer.js"

describe.skipIf(!postgresAvailable() && process.env.CI === undefined)("session turn locks on Postgres, over HTTP", () => {
  let postgres: TestPostgres
  let server: TestServer
  let url: string
  beforeAll(async () => {
    postgres = await startPostgres()
    url = postgres.createDatabase("turn_locks")
    server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 512, tokenLatency: 20 }), { sessionsDatabasePath: url })
  }, 90_000)
  afterAll(async () => {
    await server?.close()
    await postgres?.stop()
  })

  const heldLocks = () =>
    Effect.runPromise(
      Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND granted`).pipe(
        Effect.provide(postgresClientLayer(url)),
        Effect.orDie,
        Effect.map((rows) => Number(rows[0]!.n))
      )
    )

  const turn = async (session: string, stream: boolean, abortAfterMs?: number) => {
    const controller = new AbortController()
    const timer = abortAfterMs === undefined ? undefined : setTimeout(() => controller.abort(), abortAfterMs)
    try {
      const response = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        signal: controller.signal,
        headers: { "content-type": "application/json", "x-session-id": session },
        body: JSON.stringify({ model: "sim", messages: [{ role: "user", content: "hello there" }], max_tokens: 20, stream })
      })
      await response.text()
      return response.status
    } catch {
      return "aborted" as const
    } finally {
      clearTimeout(timer)
    }
  }

  it("clients that go away at any point leave no turn lock; the sessions serve again", async () => {
    // Four sessions, so turns queue behind each other's turn locks and behind the one slot, and are cut at many points.
    await Promise.all(Array.from({ length: 24 }, (_, i) => turn(`s${i % 4}`, i % 2 === 0, (i * 37) % 600)))
    for (let wait = 0; wait < 50 && (await heldLocks()) > 0; wait++) await new Promise((resolve) => setTimeout(resolve, 100))
    expect(await heldLocks()).toBe(0)
    expect(await Promise.all(["s0", "s1", "s2", "s3"].map((session) => turn(session, false)))).toEqual([200, 200, 200, 200])
  }, 120_000)
})
