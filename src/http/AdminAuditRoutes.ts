import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import { AuditLog } from "../identity/AuditLog.js"
import { InvalidParam } from "./HttpErrors.js"
import { quoteValue } from "./QuotedValue.js"

const defaultLimit = 100
const maxLimit = 1000

const invalid = (param: string, message: string) => new InvalidParam({ param, message, code: "invalid_value" })

/** `since`: an ISO 8601 time, or Unix seconds (fractions allowed); as milliseconds since the epoch. */
const sinceOf = (text: string | null): Effect.Effect<number | undefined, InvalidParam> => {
  if (text === null) return Effect.succeed(undefined)
  const ms = /^\d+(\.\d+)?$/.test(text) ? Number(text) * 1000 : Date.parse(text)
  return Number.isFinite(ms) ? Effect.succeed(ms) : Effect.fail(invalid("since", `since must be an ISO 8601 time or Unix seconds, got ${quoteValue(text)}`))
}

const limitOf = (text: string | null): Effect.Effect<number, InvalidParam> => {
  if (text === null) return Effect.succeed(defaultLimit)
  const limit = /^\d+$/.test(text) ? Number(text) : Number.NaN
  return limit >= 1 && limit <= maxLimit
    ? Effect.succeed(limit)
    : Effect.fail(invalid("limit", `limit must be an integer from 1 to ${maxLimit}, got ${quoteValue(text)}`))
}

/**
 * `GET /admin/audit?since=&tenant=&limit=`: the most recent `limit` (default 100, at most 1000) audit records at or
 * after `since` of `tenant`, oldest first (newest last); `has_more` says older matching records were left out.
 */
export const adminAuditRoutes = HttpRouter.empty.pipe(
  HttpRouter.get(
    "/admin/audit",
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const params = new URL(request.url, "http://weft").searchParams
      const since = yield* sinceOf(params.get("since"))
      const limit = yield* limitOf(params.get("limit"))
      const tenant = params.get("tenant") ?? undefined
      const { records, hasMore } = yield* Effect.flatMap(AuditLog, (log) => log.read({ since, tenant, limit }))
      return HttpServerResponse.unsafeJson({ object: "list", data: records, has_more: hasMore }, { headers: { "cache-control": "no-store" } })
    })
  )
)
