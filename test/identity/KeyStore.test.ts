import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, TestClock } from "effect"
import { KeyNotFound, KeyStore } from "../../src/identity/KeyStore.js"
import { storeBackends } from "../support/storeBackends.js"

// A real date: millisecond timestamps past 2^31 are what a 32-bit integer column or a BIGINT read back as text gets wrong.
const start = Date.UTC(2026, 11, 5)
const minute = 60_000

for (const backend of storeBackends()) describe.skipIf(!backend.available)(`KeyStore on ${backend.name}`, () => {
  beforeAll(backend.setup, 90_000)
  afterAll(backend.teardown)
  const storeOn = (database: string) => KeyStore.Default.pipe(Layer.provide(backend.sqlLayer(database)))
  const store = () => Layer.unwrapEffect(Effect.sync(() => storeOn(backend.freshDatabase())))
  const atStart = TestClock.setTime(start)

  it.effect("a created key authenticates with its tenant's limits and priority; the list never shows a secret", () =>
    Effect.gen(function*() {
      yield* atStart
      const keys = yield* KeyStore
      expect(yield* keys.hasLiveKeys()).toBe(false)
      const created = yield* keys.create({ name: "ci", tenant: "acme", scopes: ["inference", "admin"], limits: { rpm: 60, tpm: 10_000 }, expiresInMs: 30 * minute })
      yield* keys.setTenant("acme", { priority: "high", limits: { maxConcurrent: 3 } })
      expect(yield* keys.hasLiveKeys()).toBe(true)
      const principal = Option.getOrThrow(yield* keys.authenticate(created.key))
      expect(principal).toEqual({
        keyId: created.id,
        keyName: "ci",
        tenant: "acme",
        scopes: ["inference", "admin"],
        keyLimits: { rpm: 60, tpm: 10_000, maxConcurrent: undefined },
        tenantLimits: { rpm: undefined, tpm: undefined, maxConcurrent: 3 },
        defaultPriority: "high"
      })
      expect(Option.isNone(yield* keys.authenticate(`${created.key}x`))).toBe(true)
      const [listed] = yield* keys.list()
      expect(listed).toEqual({
        id: created.id,
        name: "ci",
        tenant: "acme",
        scopes: ["inference", "admin"],
        limits: { rpm: 60, tpm: 10_000, maxConcurrent: undefined },
        createdAt: start,
        lastUsedAt: start,
        expiresAt: start + 30 * minute,
        revokedAt: undefined
      })
      expect(JSON.stringify(listed)).not.toContain(created.key)
    }).pipe(Effect.provide(store())))

  it.effect("expiry, rotation with overlap and revocation take effect at the next authentication", () =>
    Effect.gen(function*() {
      yield* atStart
      const keys = yield* KeyStore
      const old = yield* keys.create({ name: "svc", tenant: "t", scopes: ["inference"] })
      const { created, previous } = yield* keys.rotate(old.id, 5 * minute)
      expect(previous.expiresAt).toBe(start + 5 * minute)
      expect(Option.isSome(yield* keys.authenticate(old.key))).toBe(true)
      yield* TestClock.adjust(5 * minute)
      expect(Option.isNone(yield* keys.authenticate(old.key))).toBe(true)
      expect(yield* Effect.flip(keys.rotate(old.id, minute))).toBeInstanceOf(KeyNotFound)
      expect(Option.isSome(yield* keys.authenticate(created.key))).toBe(true)
      const revoked = yield* keys.revoke(created.id)
      expect(revoked.revokedAt).toBe(start + 5 * minute)
      yield* TestClock.adjust(minute)
      expect((yield* keys.revoke(created.id)).revokedAt).toBe(start + 5 * minute)
      expect(Option.isNone(yield* keys.authenticate(created.key))).toBe(true)
      expect(yield* keys.hasLiveKeys()).toBe(false)
      expect(yield* Effect.flip(keys.revoke("key_nope"))).toBeInstanceOf(KeyNotFound)
    }).pipe(Effect.provide(store())))

  it.effect("setting a tenant again keeps the fields left out and replaces the rest", () =>
    Effect.gen(function*() {
      const keys = yield* KeyStore
      yield* keys.setTenant("b", { limits: { rpm: 5 } })
      yield* keys.setTenant("a", { priority: "low", limits: { rpm: 10, tpm: 1000 } })
      yield* keys.setTenant("a", { limits: { tpm: 2000 } })
      expect(yield* keys.listTenants()).toEqual([
        { name: "a", priority: "low", limits: { rpm: 10, tpm: 2000, maxConcurrent: undefined } },
        { name: "b", priority: undefined, limits: { rpm: 5, tpm: undefined, maxConcurrent: undefined } }
      ])
    }).pipe(Effect.provide(store())))

  it.scoped("two stores on one database (two replicas, or the server and the CLI) see each other's changes at once", () =>
    Effect.gen(function*() {
      yield* atStart
      const database = backend.freshDatabase()
      const [a, b] = yield* Effect.forEach([1, 2], () => Effect.map(Layer.build(storeOn(database)), Context.get(KeyStore)))
      const created = yield* a!.create({ name: "shared", tenant: "t", scopes: ["inference"] })
      expect(Option.isSome(yield* b!.authenticate(created.key))).toBe(true)
      yield* b!.revoke(created.id)
      expect(Option.isNone(yield* a!.authenticate(created.key))).toBe(true)
    }))
})
