import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Option } from "effect"
import { SessionStore } from "../sessions/SessionStore.js"
import { currentPrincipal, sessionOwner } from "../identity/Tenancy.js"
import type { Session } from "../sessions/SessionStore.js"
import { SessionNotFound } from "./HttpErrors.js"
import { usageOf } from "./OpenAiResponses.js"

const sessionIdParam = Effect.map(HttpRouter.params, (params) => params["id"] ?? "")

/**
 * The live session `id` when the caller may see it: with a key, only its own tenant's sessions (another tenant's is
 * 404, as if it did not exist); without authentication, any.
 */
const visibleSession = (id: string) =>
  Effect.gen(function*() {
    const session = yield* Effect.flatMap(SessionStore, (store) => store.get(id))
    if (Option.isNone(session) || Option.isNone(yield* currentPrincipal)) return session
    const owner = yield* sessionOwner(undefined)
    return Option.filter(session, (found) => found.cacheKey === owner)
  })

const sessionObject = (session: Session) => ({
  id: session.id,
  object: "chat.session",
  created: Math.floor(session.createdAt / 1000),
  updated: Math.floor(session.updatedAt / 1000),
  turns: session.turns,
  messages: session.messages,
  usage: usageOf(session)
})

/** `GET /v1/sessions/{id}` (the stored conversation) and `DELETE /v1/sessions/{id}`. */
export const sessionRoutes = HttpRouter.empty.pipe(
  HttpRouter.get(
    "/v1/sessions/:id",
    Effect.gen(function*() {
      const sessionId = yield* sessionIdParam
      const session = yield* visibleSession(sessionId)
      if (Option.isNone(session)) return yield* new SessionNotFound({ sessionId })
      return HttpServerResponse.unsafeJson(sessionObject(session.value))
    })
  ),
  HttpRouter.del(
    "/v1/sessions/:id",
    Effect.gen(function*() {
      const sessionId = yield* sessionIdParam
      const store = yield* SessionStore
      const deleted = yield* store.withTurnLock(
        sessionId,
        Effect.flatMap(visibleSession(sessionId), (session) => (Option.isNone(session) ? Effect.succeed(false) : store.remove(sessionId)))
      )
      if (!deleted) return yield* new SessionNotFound({ sessionId })
      return HttpServerResponse.unsafeJson({ id: sessionId, object: "chat.session.deleted", deleted: true })
    })
  )
)
