import { Context } from "effect"
import type { Option } from "effect"
import type { Priority } from "../scheduler/GenerationRequest.js"

/** What an API key may do: call the models, or manage the server (keys, tenants, audit, stats). */
export type KeyScope = "inference" | "admin"

/** Usage limits of a key or a tenant; an absent limit is no limit. */
export interface UsageLimits {
  /** Requests per minute. */
  readonly rpm?: number | undefined
  /** Tokens (prompt + completion) per minute. */
  readonly tpm?: number | undefined
  /** Requests running or queued at once. */
  readonly maxConcurrent?: number | undefined
}

/** Who is calling: the authenticated key, its tenant, and the limits that apply to it. */
export interface Principal {
  readonly keyId: string
  readonly keyName: string
  /** The isolation boundary: prefix cache, sessions and tenant limits are per tenant. */
  readonly tenant: string
  readonly scopes: ReadonlyArray<KeyScope>
  readonly keyLimits: UsageLimits
  readonly tenantLimits: UsageLimits
  /** The tenant's default priority class, used when a request names none. */
  readonly defaultPriority?: Priority | undefined
}

/** The caller of the current HTTP request; `None` when authentication is off (no keys exist). */
export class CurrentPrincipal extends Context.Tag("weft/CurrentPrincipal")<CurrentPrincipal, Option.Option<Principal>>() {}
