import { Effect, Layer } from "effect"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { KeyStore } from "../../src/identity/KeyStore.js"
import { postgresAvailable, startPostgres, type TestPostgres } from "../support/postgres.js"
import { startServer, type TestServer } from "../support/testServer.js"

// Three servers whose keys, sessions and rate limits live in one Postgres (their locations are its URL), as three
// replicas behind a plain round-robin balancer have them, without the cluster's session routing.
describe.skipIf(!postgresAvailable() && process.env.CI === undefined)("three servers sharing state in Postgres", () => {
  let postgres: TestPostgres
  let servers: ReadonlyArray<TestServer> = []
  let key: string
  const rpm = 4

  beforeAll(async () => {
    postgres = await startPostgres()
    const created = await Effect.runPromise(
      Effect.flatMap(KeyStore, (store) => store.create({ name: "shared", tenant: "acme", scopes: ["inference"], limits: { rpm } })).pipe(
        Effect.provide(KeyStore.layerPg(postgres.url))
      )
    )
    key = created.key
    servers = await Promise.all([0, 1, 2].map(() =>
      startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 1 }), {
        keysDatabasePath: postgres.url,
        sessionsDatabasePath: postgres.url
      })
    ))
  }, 120_000)
  afterAll(async () => {
    await Promise.all(servers.map((server) => server.close()))
    await postgres?.stop()
  })

  it("replicas starting at once on an empty database all create the schema and start", async () => {
    const { rateLimiterLayer } = await import("../../src/identity/SqlRateLimiter.js")
    const { SessionStore } = await import("../../src/sessions/SessionStore.js")
    for (let round = 0; round < 4; round++) {
      const url = postgres.createDatabase(`empty_${round}`)
      const replica = Layer.mergeAll(SessionStore.layer({ databasePath: url }), KeyStore.layer(url), rateLimiterLayer(url))
      const started = await Promise.all([0, 1, 2].map(() => Effect.runPromiseExit(Effect.scoped(Layer.build(replica)))))
      expect(started.map((exit) => exit._tag)).toEqual(["Success", "Success", "Success"])
    }
  }, 60_000)

  const client = (server: TestServer) => new OpenAI({ baseURL: server.baseURL, apiKey: key, maxRetries: 0 })

  it("a session started on one server continues on the others, its history shared", async () => {
    const turn = (server: TestServer, content: string) =>
      client(server).chat.completions.create({
        model: "sim",
        messages: [{ role: "user", content }],
        max_tokens: 2,
        // @ts-expect-error Weft's extension to the request body
        session_id: "shared-session"
      })
    for (const [index, server] of servers.entries()) await turn(server, `turn ${index}`)
    const response = await fetch(`${servers[0]!.url}/v1/sessions/shared-session`, { headers: { authorization: `Bearer ${key}` } })
    const session = (await response.json()) as { turns: number; messages: Array<{ role: string; content: string }> }
    expect(session.turns).toBe(3)
    expect(session.messages.filter((message) => message.role === "user").map((message) => message.content)).toEqual(["turn 0", "turn 1", "turn 2"])
  }, 60_000)

  it("a key's rpm holds across the servers: requests spread over all three admit the limit once", async () => {
    // The session test above spent 3 of the minute's requests; a fresh key keeps this one's count its own.
    const fresh = await Effect.runPromise(
      Effect.flatMap(KeyStore, (store) => store.create({ name: "limited", tenant: "other", scopes: ["inference"], limits: { rpm } })).pipe(
        Effect.provide(KeyStore.layerPg(postgres.url))
      )
    )
    const outcomes: Array<"ok" | "429"> = []
    for (let index = 0; index < 12; index++) {
      const server = servers[index % servers.length]!
      const answer = await new OpenAI({ baseURL: server.baseURL, apiKey: fresh.key, maxRetries: 0 }).chat.completions
        .create({ model: "sim", messages: [{ role: "user", content: "hi" }], max_tokens: 2 })
        .then(() => "ok" as const, (error: unknown) => {
          if (error instanceof OpenAI.RateLimitError) return "429" as const
          throw error
        })
      outcomes.push(answer)
    }
    expect(outcomes.filter((outcome) => outcome === "ok")).toHaveLength(rpm)
    expect(outcomes.slice(0, rpm)).toEqual(Array(rpm).fill("ok"))
  }, 60_000)
})
