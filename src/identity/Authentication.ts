import type { HttpServerRequest } from "@effect/platform"
import { Effect, Option } from "effect"
import { KeyRejected, ScopeMissing } from "./AuthErrors.js"
import { KeyStore } from "./KeyStore.js"
import type { KeyScope, Principal } from "./Principal.js"

/** `on`: every protected request needs a key; `off`: nobody does; `auto`: on as soon as one live key exists. */
export type AuthMode = "on" | "off" | "auto"

export const authModes: ReadonlyArray<AuthMode> = ["on", "off", "auto"]

/** How the server authenticates requests. */
export interface AuthSettings {
  readonly mode: AuthMode
  /** `/metrics` answers without a key. */
  readonly metricsPublic: boolean
}

/**
 * The scope a path needs, or `undefined` when it is open: `/health` always (load balancers probe it), the dashboard's
 * page and assets (`/`, `/ui`, `/ui/*`), `/metrics` when public. `/admin/*`, `/metrics`, `/v1/files*` and `/v1/fine_tuning/*` need `admin`; everything else (`/v1/*`, and unknown paths, so a 404 tells a caller
 * without a key nothing) needs `inference`. `admin` does not imply `inference`: a key that manages the server need not
 * be one that spends its tokens.
 */
export const scopeFor = (path: string, settings: AuthSettings): KeyScope | undefined => {
  if (path === "/health") return undefined
  // The dashboard's page and assets hold no data; everything it shows comes from `/admin/*` with the admin key.
  if (path === "/" || path === "/ui" || path.startsWith("/ui/")) return undefined
  if (path === "/metrics") return settings.metricsPublic ? undefined : "admin"
  return path === "/admin" || path.startsWith("/admin/") || isFineTuningPath(path) ? "admin" : "inference"
}

/**
 * Files and fine-tuning jobs are the operator's: they have no tenant owner yet, so an inference key must not list,
 * read or cancel another tenant's datasets and jobs. They need the `admin` scope until jobs are owned per tenant.
 */
const isFineTuningPath = (path: string): boolean =>
  path === "/v1/files" || path.startsWith("/v1/files/") || path === "/v1/fine_tuning" || path.startsWith("/v1/fine_tuning/")

/** The key a request carries: `Authorization: Bearer <key>`, else `x-api-key: <key>`. */
export const presentedKey = (headers: Readonly<Record<string, string | undefined>>): string | undefined => {
  const authorization = headers["authorization"]
  const bearer = authorization === undefined ? undefined : /^\s*bearer\s+(\S+)\s*$/i.exec(authorization)?.[1]
  if (bearer !== undefined) return bearer
  const apiKey = headers["x-api-key"]?.trim()
  return apiKey === undefined || apiKey === "" ? undefined : apiKey
}

/**
 * Who is calling: `None` when authentication does not apply (off, no keys under `auto`, an open path, a CORS
 * preflight); fails with 401 for a missing or bad key and 403 for a key without the path's scope.
 */
export const authenticateRequest = (request: HttpServerRequest.HttpServerRequest, path: string, settings: AuthSettings) =>
  Effect.gen(function*() {
    if (settings.mode === "off" || request.method === "OPTIONS") return Option.none<Principal>()
    const scope = scopeFor(path, settings)
    if (scope === undefined) return Option.none<Principal>()
    const store = yield* KeyStore
    const secret = presentedKey(request.headers)
    // A key that authenticates proves keys exist; only a request without a good one asks whether any do (`auto`).
    const principal = secret === undefined ? Option.none<Principal>() : yield* store.authenticate(secret)
    if (Option.isNone(principal)) {
      if (settings.mode === "auto" && !(yield* store.hasLiveKeys())) return principal
      return yield* new KeyRejected({ sent: secret !== undefined })
    }
    if (!principal.value.scopes.includes(scope)) return yield* new ScopeMissing({ scope, path })
    return principal
  })

/** Whether `host` is a loopback address, where an open server reaches only this machine. */
export const isLoopbackHost = (host: string): boolean => {
  const name = host.toLowerCase().replace(/^\[|\]$/g, "")
  return name === "localhost" || name === "::1" || /^127\.\d+\.\d+\.\d+$/.test(name)
}

/** Why the server must not start open on `host`, or `undefined` when it may. */
export const openServerRefusal = (host: string, mode: AuthMode, hasKeys: boolean): string | undefined =>
  mode === "auto" && !hasKeys && !isLoopbackHost(host)
    ? `refusing to listen on ${host} without authentication: no API keys exist, so anyone who reaches the port could use ` +
      `every endpoint. Create a key first (weft keys create --name NAME --tenant TENANT --data-dir DIR), ` +
      `or pass --auth off to serve without keys on purpose.`
    : undefined
