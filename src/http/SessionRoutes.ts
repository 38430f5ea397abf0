import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Option } from "effect"
import { removeSession, SessionKvConfig } from "../sessions/SessionKvFiles.js"
import { SessionOwner, SessionStore } from "../sessions/SessionStore.js"
import { sessionOwner } from "../identity/Tenancy.js"
import type { Session } from "../sessions/SessionStore.js"
import { SessionNotFound } from "./HttpErrors.js"
import { usageOf } from "./OpenAiResponses.js"

/**
 * The owner a request acts as: the API key's tenant; without authentication its `cache_salt` (the body's on a chat
 * turn, the `X-Cache-Salt` header on the session routes, which have no body; `""` without one).
 */
export const sessionOwnerOf = (cacheSalt: string | undefined): Effect.Effect<SessionOwner> =>
  Effect.map(sessionOwner(cacheSalt), SessionOwner.make)

/** The header that carries the salt on `GET`/`DELETE /v1/sessions/{id}` (not a query parameter: URLs end up in logs). */
const saltHeader = "x-cache-salt"

const requestOwner = Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => sessionOwnerOf(request.headers[saltHeader]))

const sessionIdParam = Effect.map(HttpRouter.params, (params) => params["id"] ?? "")

const sessionObject = (session: Session) => ({
  id: session.id,
  object: "chat.session",
  created: Math.floor(session.createdAt / 1000),
  updated: Math.floor(session.updatedAt / 1000),
  turns: session.turns,
  messages: session.messages,
  usage: usageOf(session)
})

/**
 * `GET /v1/sessions/{id}` (the stored conversation) and `DELETE /v1/sessions/{id}`, for the session's owner only;
 * anyone else gets the same 404 as for an id that never existed.
 */
export const sessionRoutes = HttpRouter.empty.pipe(
  HttpRouter.get(
    "/v1/sessions/:id",
    Effect.gen(function*() {
      const sessionId = yield* sessionIdParam
      const owner = yield* requestOwner
      const session = yield* Effect.flatMap(SessionStore, (store) => store.get(sessionId, owner))
      if (Option.isNone(session)) return yield* new SessionNotFound({ sessionId })
      return HttpServerResponse.unsafeJson(sessionObject(session.value))
    })
  ),
  HttpRouter.del(
    "/v1/sessions/:id",
    Effect.gen(function*() {
      const sessionId = yield* sessionIdParam
      const owner = yield* requestOwner
      const deleted = yield* Effect.flatMap(SessionStore, (store) => store.remove(sessionId, owner))
      if (!deleted) return yield* new SessionNotFound({ sessionId })
      const kv = Option.getOrUndefined(yield* Effect.serviceOption(SessionKvConfig))
      if (kv !== undefined) yield* removeSession(kv, sessionId)
      return HttpServerResponse.unsafeJson({ id: sessionId, object: "chat.session.deleted", deleted: true })
    })
  )
)
