import { Effect, Option } from "effect"
import { currentPrincipal } from "./currentPrincipal.js"

/**
 * A tenant's keys start with NUL, which no client-sent value can hold (bodies with NUL are refused), so a tenant's
 * cache or sessions can never be reached with a crafted `cache_salt` from a request without a key.
 */
const tenantKey = (tenant: string) => `\u0000${tenant}`


/**
 * The prefix-cache key: the caller's tenant, with a client's `cache_salt` separating further within it; without
 * authentication, the salt alone (vLLM's `cache_salt`).
 */
export const prefixCacheKey = (salt: string | undefined) =>
  Effect.map(currentPrincipal, Option.match({
    onNone: () => salt,
    onSome: (principal) => (salt === undefined ? tenantKey(principal.tenant) : `${tenantKey(principal.tenant)}\u0000${salt}`)
  }))

/** Who owns a session: the caller's tenant; without authentication, the client's `cache_salt` (empty when none). */
export const sessionOwner = (salt: string | undefined) =>
  Effect.map(currentPrincipal, Option.match({ onNone: () => salt ?? "", onSome: (principal) => tenantKey(principal.tenant) }))
