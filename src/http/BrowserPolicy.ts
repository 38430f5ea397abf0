import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { HttpServerError } from "@effect/platform"
import { Effect } from "effect"
import { HostNotAllowed, OriginNotAllowed } from "./HttpErrors.js"

/** Which `Host` names and which browser origins the server answers. */
export interface BrowserPolicyOptions {
  /** The address the server is bound to; it decides the default of `allowedHosts`. */
  readonly host: string
  /** Host names (any port) requests may be addressed to; `*` is any. Default: the loopback names on loopback, else any. */
  readonly allowedHosts?: ReadonlyArray<string> | undefined
  /** Origins whose pages may call the API (CORS); `*` is any. Default: none. */
  readonly corsOrigins?: ReadonlyArray<string> | undefined
}

/** The names a loopback-bound server answers to by default: a DNS-rebinding page reaches it under another name. */
const loopbackNames = ["localhost", "127.0.0.1", "[::1]"]

/** The host name of a `Host` header or an `--allowed-hosts` entry: lower case, without port or trailing dot. */
const hostNameOf = (host: string): string => {
  const text = host.trim().toLowerCase()
  // A bare IPv6 address (only in a setting: a Host header brackets it) has colons but no port.
  const name = text.startsWith("[")
    ? text.slice(0, text.indexOf("]") + 1)
    : text.indexOf(":") !== text.lastIndexOf(":")
    ? `[${text}]`
    : text.replace(/:\d*$/, "")
  return name.endsWith(".") ? name.slice(0, -1) : name
}

const isLoopback = (host: string): boolean => {
  const name = hostNameOf(host)
  return loopbackNames.includes(name) || /^127\.\d+\.\d+\.\d+$/.test(name)
}

/** Request headers a browser page may send cross-origin, beyond those it asks for itself. */
const corsAllowHeaders = ["Authorization", "Content-Type", "X-Session-Id", "X-Request-Id"]
/** Response headers a cross-origin page may read. */
const corsExposeHeaders = "X-Request-Id, X-Session-Id, Retry-After"

/**
 * Host checks against DNS rebinding and explicit CORS: `guard` refuses requests addressed to a host not allowed and
 * answers `OPTIONS` (preflights included); `withCors` adds `Access-Control-Allow-Origin` for allowed origins.
 */
export const browserPolicy = (options: BrowserPolicyOptions, methodsOf: (url: string) => ReadonlyArray<string>) => {
  const configured = options.allowedHosts ?? (isLoopback(options.host) ? [...loopbackNames, options.host] : ["*"])
  const anyHost = configured.includes("*")
  const hosts = new Set(configured.map(hostNameOf))
  const origins = new Set((options.corsOrigins ?? []).map((origin) => origin.toLowerCase().replace(/\/$/, "")))
  const anyOrigin = origins.has("*")

  const hostAllowed = (host: string | undefined) => anyHost || (host !== undefined && hosts.has(hostNameOf(host)))
  const originAllowed = (origin: string) => anyOrigin || origins.has(origin.toLowerCase())
  const allowOrigin = (origin: string) => (anyOrigin ? "*" : origin)

  const preflight = (request: HttpServerRequest.HttpServerRequest, origin: string, methods: ReadonlyArray<string>) => {
    if (!originAllowed(origin)) return Effect.fail(new OriginNotAllowed({ origin }))
    const asked = (request.headers["access-control-request-headers"] ?? "").split(",").map((name) => name.trim()).filter((name) => name !== "")
    const allowHeaders = [...new Set([...corsAllowHeaders, ...asked].map((name) => name.toLowerCase()))]
    return Effect.succeed(HttpServerResponse.empty({
      status: 204,
      headers: {
        "access-control-allow-origin": allowOrigin(origin),
        "access-control-allow-methods": methods.filter((method) => method !== "HEAD" && method !== "OPTIONS").join(", "),
        "access-control-allow-headers": allowHeaders.join(", "),
        "access-control-max-age": "600",
        vary: "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
      }
    }))
  }

  /** Refuses a request for a host not allowed; answers `OPTIONS` on a routed path; otherwise runs `app`. */
  const guard = <E, R>(app: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const host = request.headers["host"]
      if (!hostAllowed(host)) return yield* new HostNotAllowed({ host })
      if (request.method !== "OPTIONS") return yield* app
      const methods = methodsOf(request.url)
      if (methods.length === 0) return yield* new HttpServerError.RouteNotFound({ request })
      const origin = request.headers["origin"]
      if (origin !== undefined && request.headers["access-control-request-method"] !== undefined) {
        return yield* preflight(request, origin, methods)
      }
      return HttpServerResponse.empty({ status: 204, headers: { allow: methods.join(", ") } })
    })

  /** `response` with CORS headers when the request came from an allowed origin (preflights have theirs already). */
  const withCors = (request: HttpServerRequest.HttpServerRequest, response: HttpServerResponse.HttpServerResponse) => {
    const origin = request.headers["origin"]
    if (origin === undefined || !originAllowed(origin) || response.headers["access-control-allow-origin"] !== undefined) return response
    return HttpServerResponse.setHeaders(response, {
      "access-control-allow-origin": allowOrigin(origin),
      "access-control-expose-headers": corsExposeHeaders,
      ...(anyOrigin ? {} : { vary: "Origin" })
    })
  }

  return { guard, withCors } as const
}
