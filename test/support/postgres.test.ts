import { describe, expect, it } from "vitest"
import { postgresAvailable, startPostgres } from "./postgres.js"

const running = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe.skipIf(!postgresAvailable() && process.env.CI === undefined)("the test Postgres", () => {
  it("stops its server: no postgres left running once stop resolves", async () => {
    const postgres = await startPostgres()
    expect(running(postgres.pid)).toBe(true)
    await postgres.stop()
    expect(running(postgres.pid)).toBe(false)
  }, 60_000)
})
