// Over 300 lines: keys and tenants share one database, and authentication reads a key and its tenant together;
// splitting them would spread that one read over two services.
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Clock, Effect, Layer, Option, Schema } from "effect"
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import * as path from "node:path"
import type { Priority } from "../scheduler/GenerationRequest.js"
import { postgresClientLayer, type PostgresClientOptions } from "../storage/postgresClient.js"
import { SqlInteger } from "../storage/SqlInteger.js"
import type { KeyScope, Principal, UsageLimits } from "./Principal.js"

/** Every key starts with this, so a leaked one is recognisable (and redacted in logs). */
export const keyPrefix = "sk-weft-"

/** The scopes a key can hold. */
export const keyScopes: ReadonlyArray<KeyScope> = ["inference", "admin"]

/** The priority classes a tenant can default to. */
export const priorities: ReadonlyArray<Priority> = ["high", "normal", "low"]

/** The API keys and tenants database of a data dir, shared by `weft serve` and `weft keys`/`weft tenants`. */
export const keysDatabasePath = (dataDir: string): string => path.join(dataDir, "keys.sqlite")

/** The key database failed. */
export class KeyStoreFailed extends Schema.TaggedError<KeyStoreFailed>()("KeyStoreFailed", {
  operation: Schema.String,
  message: Schema.String
}) {}

/** No key has this id. */
export class KeyNotFound extends Schema.TaggedError<KeyNotFound>()("KeyNotFound", {
  keyId: Schema.String
}) {
  override get message(): string {
    return `No API key with id \`${this.keyId}\` exists.`
  }
}

/** What is known about a key, never the key itself. */
export interface KeyInfo {
  readonly id: string
  readonly name: string
  readonly tenant: string
  readonly scopes: ReadonlyArray<KeyScope>
  readonly limits: UsageLimits
  readonly createdAt: number
  readonly lastUsedAt: number | undefined
  readonly expiresAt: number | undefined
  readonly revokedAt: number | undefined
}

/** A key just made: the only time its secret is known. */
export interface CreatedKey extends KeyInfo {
  readonly key: string
}

/** What `create` takes. */
export interface NewKey {
  readonly name: string
  readonly tenant: string
  readonly scopes: ReadonlyArray<KeyScope>
  /** From now; `undefined` never expires. */
  readonly expiresInMs?: number | undefined
  readonly limits?: UsageLimits | undefined
}

/** A tenant's defaults and limits. */
export interface TenantInfo {
  readonly name: string
  readonly priority: Priority | undefined
  readonly limits: UsageLimits
}

const failed = (operation: string) => (error: SqlError | { readonly message: string }) =>
  new KeyStoreFailed({ operation, message: error.message })

const nullable = <A>(value: A | undefined): A | null => (value === undefined ? null : value)
const optional = <A>(value: A | null): A | undefined => (value === null ? undefined : value)

const ScopeList = Schema.transform(Schema.String, Schema.Array(Schema.Literal("inference", "admin")), {
  strict: true,
  decode: (text) => text.split(",").filter((scope) => scope !== "") as Array<KeyScope>,
  encode: (scopes) => scopes.join(",")
})

const KeyRow = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  tenant: Schema.String,
  scopes: ScopeList,
  hash: Schema.String,
  rpm: Schema.NullOr(SqlInteger),
  tpm: Schema.NullOr(SqlInteger),
  max_concurrent: Schema.NullOr(SqlInteger),
  created_at: SqlInteger,
  last_used_at: Schema.NullOr(SqlInteger),
  expires_at: Schema.NullOr(SqlInteger),
  revoked_at: Schema.NullOr(SqlInteger)
})

const TenantRow = Schema.Struct({
  name: Schema.String,
  priority: Schema.NullOr(Schema.Literal("high", "normal", "low")),
  rpm: Schema.NullOr(SqlInteger),
  tpm: Schema.NullOr(SqlInteger),
  max_concurrent: Schema.NullOr(SqlInteger)
})

const decodeKeys = Schema.decodeUnknown(Schema.Array(KeyRow))
const decodeTenants = Schema.decodeUnknown(Schema.Array(TenantRow))

const limitsOf = (row: { readonly rpm: number | null; readonly tpm: number | null; readonly max_concurrent: number | null }): UsageLimits => ({
  rpm: optional(row.rpm),
  tpm: optional(row.tpm),
  maxConcurrent: optional(row.max_concurrent)
})

const infoOf = (row: typeof KeyRow.Type): KeyInfo => ({
  id: row.id,
  name: row.name,
  tenant: row.tenant,
  scopes: row.scopes,
  limits: limitsOf(row),
  createdAt: row.created_at,
  lastUsedAt: optional(row.last_used_at),
  expiresAt: optional(row.expires_at),
  revokedAt: optional(row.revoked_at)
})

/**
 * SHA-256 of the secret, hex. Keys are 256 random bits, so a fast hash is enough: a slow KDF protects guessable
 * passwords from offline guessing, and nobody can guess 2^256 secrets however fast each try is. A fast hash also keeps
 * authenticating every request cheap.
 */
const hashOf = (secret: string): string => createHash("sha256").update(secret, "utf8").digest("hex")

/** A new secret: `sk-weft-` and 32 random bytes, base64url. */
const newSecret = (): string => `${keyPrefix}${randomBytes(32).toString("base64url")}`

/** Whether a key row authenticates now: not revoked, not expired. */
const isLive = (row: { readonly revoked_at: number | null; readonly expires_at: number | null }, now: number): boolean =>
  row.revoked_at === null && (row.expires_at === null || row.expires_at > now)

/** How often a key's `last_used_at` is written at most, so busy keys do not turn every request into a write. */
const lastUsedResolutionMs = 60_000

/**
 * API keys and tenants in SQL: SQLite on one machine, Postgres shared by a cluster's replicas. Nothing is cached: every request reads the database (one indexed lookup), so a key
 * created, revoked or rotated by the CLI in another process counts at the next request.
 */
export class KeyStore extends Effect.Service<KeyStore>()("weft/KeyStore", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE IF NOT EXISTS api_keys (
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL,
      tenant TEXT NOT NULL,
      scopes TEXT NOT NULL,
      hash TEXT NOT NULL UNIQUE,
      rpm BIGINT,
      tpm BIGINT,
      max_concurrent BIGINT,
      created_at BIGINT NOT NULL,
      last_used_at BIGINT,
      expires_at BIGINT,
      revoked_at BIGINT
    )`.pipe(Effect.orDie)
    yield* sql`CREATE TABLE IF NOT EXISTS tenants (
      name TEXT PRIMARY KEY,
      priority TEXT,
      rpm BIGINT,
      tpm BIGINT,
      max_concurrent BIGINT
    )`.pipe(Effect.orDie)

    const keyRows = (operation: string, rows: Effect.Effect<ReadonlyArray<unknown>, SqlError>) =>
      Effect.flatMap(rows, decodeKeys).pipe(Effect.mapError(failed(operation)))

    const tenantRow = (name: string) =>
      sql`SELECT * FROM tenants WHERE name = ${name}`.pipe(
        Effect.flatMap(decodeTenants),
        Effect.map((rows) => Option.fromNullable(rows[0])),
        Effect.mapError(failed("tenant"))
      )

    /** Creates a key; its secret is in the result and nowhere else. */
    const create = Effect.fn("KeyStore.create")(function*(key: NewKey) {
      const now = yield* Clock.currentTimeMillis
      const secret = newSecret()
      const id = `key_${randomBytes(12).toString("hex")}`
      const limits = key.limits ?? {}
      const scopes = keyScopes.filter((scope) => key.scopes.includes(scope))
      yield* sql`INSERT INTO api_keys ${
        sql.insert({
          id,
          name: key.name,
          tenant: key.tenant,
          scopes: scopes.join(","),
          hash: hashOf(secret),
          rpm: nullable(limits.rpm),
          tpm: nullable(limits.tpm),
          max_concurrent: nullable(limits.maxConcurrent),
          created_at: now,
          last_used_at: null,
          expires_at: key.expiresInMs === undefined ? null : now + key.expiresInMs,
          revoked_at: null
        })
      }`.pipe(Effect.mapError(failed("create")))
      const created: CreatedKey = {
        id,
        key: secret,
        name: key.name,
        tenant: key.tenant,
        scopes,
        limits,
        createdAt: now,
        lastUsedAt: undefined,
        expiresAt: key.expiresInMs === undefined ? undefined : now + key.expiresInMs,
        revokedAt: undefined
      }
      return created
    })

    /** Every key, oldest first, revoked ones included. */
    const list = Effect.fn("KeyStore.list")(function*() {
      const rows = yield* keyRows("list", sql`SELECT * FROM api_keys ORDER BY created_at, id`)
      return rows.map(infoOf)
    })

    const find = (operation: string, id: string) =>
      Effect.flatMap(keyRows(operation, sql`SELECT * FROM api_keys WHERE id = ${id}`), (rows) =>
        rows[0] === undefined ? Effect.fail(new KeyNotFound({ keyId: id })) : Effect.succeed(rows[0]))

    /** Revokes key `id` at once (revoking it again keeps the first time). */
    const revoke = Effect.fn("KeyStore.revoke")(function*(id: string) {
      const row = yield* find("revoke", id)
      const now = yield* Clock.currentTimeMillis
      yield* sql`UPDATE api_keys SET revoked_at = ${now} WHERE id = ${id} AND revoked_at IS NULL`.pipe(Effect.mapError(failed("revoke")))
      return infoOf({ ...row, revoked_at: row.revoked_at ?? now })
    })

    /**
     * A new key with the same name, tenant, scopes, limits and expiry; the old one keeps working for `overlapMs`
     * more (its expiry moves to then, unless it expires sooner anyway).
     */
    const rotate = Effect.fn("KeyStore.rotate")(function*(id: string, overlapMs: number) {
      const row = yield* find("rotate", id)
      const now = yield* Clock.currentTimeMillis
      if (!isLive(row, now)) return yield* new KeyNotFound({ keyId: id })
      const created = yield* create({
        name: row.name,
        tenant: row.tenant,
        scopes: row.scopes,
        limits: limitsOf(row),
        expiresInMs: row.expires_at === null ? undefined : Math.max(0, row.expires_at - now)
      })
      const oldExpiry = Math.min(row.expires_at ?? Infinity, now + overlapMs)
      yield* sql`UPDATE api_keys SET expires_at = ${oldExpiry} WHERE id = ${id}`.pipe(Effect.mapError(failed("rotate")))
      return { created, previous: infoOf({ ...row, expires_at: oldExpiry }) }
    })

    /** Whether any key can still authenticate: with none, the server is open (when `--auth auto`). */
    const hasLiveKeys = Effect.fn("KeyStore.hasLiveKeys")(function*() {
      const now = yield* Clock.currentTimeMillis
      const rows = yield* sql`SELECT 1 AS live FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ${now}) LIMIT 1`.pipe(
        Effect.mapError(failed("hasLiveKeys"))
      )
      return rows.length > 0
    })

    /** The caller a secret belongs to; `None` for an unknown, revoked or expired key. */
    const authenticate = Effect.fn("KeyStore.authenticate")(function*(secret: string) {
      if (!secret.startsWith(keyPrefix)) return Option.none<Principal>()
      const hash = hashOf(secret)
      const rows = yield* keyRows("authenticate", sql`SELECT * FROM api_keys WHERE hash = ${hash}`)
      const row = rows[0]
      // The lookup found the row by its hash already; comparing in constant time keeps the check itself from leaking.
      if (row === undefined || !timingSafeEqual(Buffer.from(row.hash, "hex"), Buffer.from(hash, "hex"))) return Option.none<Principal>()
      const now = yield* Clock.currentTimeMillis
      if (!isLive(row, now)) return Option.none<Principal>()
      if (row.last_used_at === null || now - row.last_used_at >= lastUsedResolutionMs) {
        yield* sql`UPDATE api_keys SET last_used_at = ${now} WHERE id = ${row.id}`.pipe(Effect.mapError(failed("authenticate")))
      }
      const tenant = yield* tenantRow(row.tenant)
      const principal: Principal = {
        keyId: row.id,
        keyName: row.name,
        tenant: row.tenant,
        scopes: row.scopes,
        keyLimits: limitsOf(row),
        tenantLimits: Option.match(tenant, { onNone: () => ({}), onSome: limitsOf }),
        defaultPriority: Option.getOrUndefined(Option.flatMap(tenant, (one) => Option.fromNullable(one.priority)))
      }
      return Option.some(principal)
    })

    /** Sets a tenant's default priority and limits (a field left out keeps its value). */
    const setTenant = Effect.fn("KeyStore.setTenant")(function*(
      name: string,
      changes: { readonly priority?: Priority | undefined; readonly limits?: UsageLimits | undefined }
    ) {
      const existing = yield* tenantRow(name)
      const before = Option.getOrElse(existing, () => ({ name, priority: null, rpm: null, tpm: null, max_concurrent: null }))
      const limits = changes.limits ?? {}
      const row = {
        name,
        priority: changes.priority ?? before.priority,
        rpm: limits.rpm ?? before.rpm,
        tpm: limits.tpm ?? before.tpm,
        max_concurrent: limits.maxConcurrent ?? before.max_concurrent
      }
      yield* sql`INSERT INTO tenants ${sql.insert(row)} ON CONFLICT (name) DO UPDATE SET priority = excluded.priority, rpm = excluded.rpm,
        tpm = excluded.tpm, max_concurrent = excluded.max_concurrent`.pipe(Effect.mapError(failed("setTenant")))
      const tenant: TenantInfo = { name, priority: optional(row.priority), limits: limitsOf(row) }
      return tenant
    })

    /** Every tenant with settings, by name. */
    const listTenants = Effect.fn("KeyStore.listTenants")(function*() {
      const rows = yield* sql`SELECT * FROM tenants ORDER BY name`.pipe(Effect.flatMap(decodeTenants), Effect.mapError(failed("listTenants")))
      return rows.map((row): TenantInfo => ({ name: row.name, priority: optional(row.priority), limits: limitsOf(row) }))
    })

    return { create, list, revoke, rotate, hasLiveKeys, authenticate, setTenant, listTenants } as const
  })
}) {
  /** The store on a SQLite file (created if missing); `:memory:` keeps keys for the process only. */
  static readonly layerSqlite = (databasePath: string) =>
    KeyStore.Default.pipe(Layer.provide(SqliteClient.layer({ filename: databasePath })))

  /** The store on Postgres at `url`, shared by every replica on that database (its keys are managed through the admin API). */
  static readonly layerPg = (url: string, options?: PostgresClientOptions) => KeyStore.Default.pipe(Layer.provide(postgresClientLayer(url, options)))
}
