import { Schema } from "effect"
import { safeIdPattern } from "../http/SafeId.js"
import type { KeyInfo, TenantInfo } from "./KeyStore.js"
import type { UsageLimits } from "./Principal.js"

const seconds = (ms: number | undefined): number | null => (ms === undefined ? null : Math.floor(ms / 1000))

const limitsJson = (limits: UsageLimits) => ({
  rpm: limits.rpm ?? null,
  tpm: limits.tpm ?? null,
  max_concurrent: limits.maxConcurrent ?? null
})

/** Whether a key can authenticate at `now`. */
export const keyStatus = (key: KeyInfo, now: number): "active" | "revoked" | "expired" =>
  key.revokedAt !== undefined ? "revoked" : key.expiresAt !== undefined && key.expiresAt <= now ? "expired" : "active"

/** A key as the admin API and `weft keys … --json` show it (times in Unix seconds), never its secret. */
export const keyJson = (key: KeyInfo, now: number) => ({
  id: key.id,
  object: "api_key",
  name: key.name,
  tenant: key.tenant,
  scopes: key.scopes,
  status: keyStatus(key, now),
  limits: limitsJson(key.limits),
  created_at: seconds(key.createdAt),
  last_used_at: seconds(key.lastUsedAt),
  expires_at: seconds(key.expiresAt),
  revoked_at: seconds(key.revokedAt)
})

/** A tenant as `weft tenants list --json` shows it. */
export const tenantJson = (tenant: TenantInfo) => ({
  name: tenant.name,
  priority: tenant.priority ?? null,
  limits: limitsJson(tenant.limits)
})

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** `90s`, `30m`, `12h`, `30d` (a bare number is seconds) in milliseconds; `undefined` when it is not a duration. */
export const parseKeyDuration = (text: string): number | undefined => {
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/.exec(text.trim().toLowerCase())
  return match === null ? undefined : Math.round(Number(match[1]) * durationUnits[match[2] ?? "s"]!)
}

/** A duration given as text (`30d`, `1h`, `1.5s`), decoded to milliseconds. */
export const KeyDuration = Schema.String.pipe(
  Schema.filter((text) => parseKeyDuration(text) !== undefined, { message: () => "a duration like 90s, 30m, 12h or 30d" }),
  Schema.transform(Schema.Number, { strict: true, decode: (text) => parseKeyDuration(text)!, encode: (ms) => `${ms}ms` })
)

/** Tenant names end up in metric labels and log fields: letters, digits, `.`, `_`, `:` or `-`. */
export const TenantName = Schema.String.pipe(
  Schema.filter((text) => safeIdPattern.test(text), { message: () => "a tenant name of 1–128 letters, digits, or . _ : -" })
)

const Limit = Schema.Int.pipe(Schema.positive())

/** `POST /admin/keys`: the `weft keys create` flags as JSON. */
export const CreateKeyBody = Schema.Struct({
  name: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(200)),
  tenant: TenantName,
  scopes: Schema.optional(Schema.Array(Schema.Literal("inference", "admin")).pipe(Schema.minItems(1))),
  expires: Schema.optional(KeyDuration),
  rpm: Schema.optional(Limit),
  tpm: Schema.optional(Limit),
  max_concurrent: Schema.optional(Limit)
})

/** `POST /admin/keys/{id}/rotate`: how long the old key keeps working. */
export const RotateKeyBody = Schema.Struct({
  overlap: Schema.optional(KeyDuration)
})

/** The default rotation overlap: an hour to roll the new key out. */
export const defaultOverlapMs = 3_600_000
