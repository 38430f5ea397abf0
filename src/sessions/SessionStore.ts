// Over 300 lines: sessions and stored Responses share one SQLite database, its schema set-up and its TTL sweep. The
// Responses half is the next to move into a ResponseStore of its own, when response chains get owners.
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Clock, Context, Duration, Effect, Layer, Option, Schedule, Schema } from "effect"
import type { Scope } from "effect"
import type { ChatMessage } from "../engine/Backend.js"
import { makePgAdvisoryLocks } from "../storage/pgAdvisoryLocks.js"
import { postgresClientLayer, type PostgresClientOptions } from "../storage/postgresClient.js"
import { SqlInteger } from "../storage/SqlInteger.js"

/** Where sessions live and how long an idle one is kept. */
export interface SessionSettings {
  /** SQLite file; `:memory:` keeps sessions for the process only. */
  readonly databasePath: string
  readonly ttlMs: number
  /** How often expired sessions are swept. */
  readonly sweepIntervalMs: number
}

export class SessionConfig extends Context.Tag("weft/SessionConfig")<SessionConfig, SessionSettings>() {
  static layer = (settings: Partial<SessionSettings> & Pick<SessionSettings, "databasePath">): Layer.Layer<SessionConfig> =>
    Layer.succeed(SessionConfig, { ttlMs: 24 * 60 * 60 * 1000, sweepIntervalMs: 60_000, ...settings })
}

/**
 * Who a session belongs to. Today it is the client's `cache_salt` (`""` without one); once API keys exist it is
 * the key's tenant. Every read, delete and continuation of a session is checked against it.
 */
export const SessionOwner = Schema.String.pipe(Schema.brand("SessionOwner"))
export type SessionOwner = typeof SessionOwner.Type

const ChatMessageSchema = Schema.Struct({
  role: Schema.Literal("system", "user", "assistant", "tool"),
  content: Schema.String,
  /** The tool calls an assistant turn made (Responses API conversations). */
  toolCalls: Schema.optional(Schema.Array(Schema.Struct({ id: Schema.String, name: Schema.String, arguments: Schema.String }))),
  /** The call a tool turn answers. */
  toolCallId: Schema.optional(Schema.String)
})

/** A stored conversation: its history, who it belongs to, and its totals. */
export class Session extends Schema.Class<Session>("Session")({
  id: Schema.String,
  owner: SessionOwner,
  messages: Schema.Array(ChatMessageSchema),
  turns: Schema.Number,
  promptTokens: Schema.Number,
  completionTokens: Schema.Number,
  cachedTokens: Schema.Number,
  createdAt: Schema.Number,
  updatedAt: Schema.Number
}) {}

/** A live session with this id belongs to another owner (callers answer as if it did not exist). */
export class SessionOwnedByAnother extends Schema.TaggedError<SessionOwnedByAnother>()("SessionOwnedByAnother", {
  sessionId: Schema.String
}) {}

/** A stored Responses API response: its body, and the conversation a `previous_response_id` continues from. */
export class StoredResponse extends Schema.Class<StoredResponse>("StoredResponse")({
  id: Schema.String,
  /** The prefix-cache isolation key of the client that created it. */
  cacheKey: Schema.String,
  /** The conversation up to and including this response's reply, without its `instructions`. */
  messages: Schema.Array(ChatMessageSchema),
  /** The response object as `GET /v1/responses/{id}` returns it. */
  body: Schema.Unknown,
  createdAt: Schema.Number
}) {}

const ResponseRow = Schema.Struct({
  id: Schema.String,
  cache_key: Schema.String,
  messages: Schema.parseJson(Schema.Array(ChatMessageSchema)),
  body: Schema.parseJson(Schema.Unknown),
  created_at: SqlInteger
})

const decodeResponseRow = Schema.decodeUnknown(ResponseRow)

/** The session store's database failed. */
export class SessionStoreFailed extends Schema.TaggedError<SessionStoreFailed>()("SessionStoreFailed", {
  operation: Schema.String,
  message: Schema.String
}) {}

const SessionRow = Schema.Struct({
  id: Schema.String,
  // The column keeps its first name so existing databases open unchanged; it holds the owner.
  cache_key: SessionOwner,
  messages: Schema.parseJson(Schema.Array(ChatMessageSchema)),
  turns: SqlInteger,
  prompt_tokens: SqlInteger,
  completion_tokens: SqlInteger,
  cached_tokens: SqlInteger,
  created_at: SqlInteger,
  updated_at: SqlInteger
})

const decodeRow = Schema.decodeUnknown(SessionRow)

const failed = (operation: string) => (error: SqlError | { readonly message: string }) =>
  new SessionStoreFailed({ operation, message: error.message })

/** One finished turn, appended to a session. */
export interface SessionTurn {
  readonly newMessages: ReadonlyArray<ChatMessage>
  readonly reply: ChatMessage
  readonly usage: { readonly promptTokens: number; readonly completionTokens: number; readonly cachedTokens: number }
}

/**
 * Chat sessions persisted in SQL (SQLite on one machine, Postgres shared by the replicas of a cluster), so they survive
 * a restart. Turns of one session run one at a time (`withTurnLock`): in-process, and on Postgres across replicas too;
 * idle sessions past the TTL are swept.
 */
export class SessionStore extends Effect.Service<SessionStore>()("weft/SessionStore", {
  scoped: Effect.gen(function*() {
    const settings = yield* SessionConfig
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE IF NOT EXISTS sessions (
      id TEXT PRIMARY KEY,
      cache_key TEXT NOT NULL,
      messages TEXT NOT NULL,
      turns BIGINT NOT NULL,
      prompt_tokens BIGINT NOT NULL,
      completion_tokens BIGINT NOT NULL,
      cached_tokens BIGINT NOT NULL,
      created_at BIGINT NOT NULL,
      updated_at BIGINT NOT NULL
    )`.pipe(Effect.orDie)
    yield* sql`CREATE INDEX IF NOT EXISTS sessions_updated_at ON sessions (updated_at)`.pipe(Effect.orDie)
    yield* sql`CREATE TABLE IF NOT EXISTS responses (
      id TEXT PRIMARY KEY,
      cache_key TEXT NOT NULL,
      messages TEXT NOT NULL,
      body TEXT NOT NULL,
      created_at BIGINT NOT NULL
    )`.pipe(Effect.orDie)
    yield* sql`CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at)`.pipe(Effect.orDie)

    const locks = new Map<string, { readonly semaphore: Effect.Semaphore; users: number }>()
    // On Postgres other replicas share the sessions: the in-process lock is followed by an advisory lock.
    const replicaLocks = yield* sql.onDialectOrElse({
      pg: () => Effect.map(makePgAdvisoryLocks(sql), Option.some),
      orElse: () => Effect.succeed(Option.none())
    })
    const lockAcrossReplicas = (id: string) =>
      Option.match(replicaLocks, {
        onNone: () => Effect.void,
        // A failed lock query leaves the turn with the in-process lock only, as on one machine: logged, not fatal.
        onSome: (replicas) =>
          replicas.lock(`weft/session/${id}`).pipe(
            Effect.catchAll((error) => Effect.logWarning("The session's cross-replica turn lock could not be taken", error))
          )
      })

    /**
     * Holds the turn lock of session `id` until the caller's scope closes; other sessions are not blocked. On Postgres
     * the lock holds across replicas: a second replica's turn of the same session waits for this one.
     */
    const lockTurn = (id: string): Effect.Effect<void, never, Scope.Scope> =>
      Effect.acquireRelease(
        Effect.sync(() => {
          let lock = locks.get(id)
          if (lock === undefined) {
            lock = { semaphore: Effect.unsafeMakeSemaphore(1), users: 0 }
            locks.set(id, lock)
          }
          lock.users += 1
          return lock
        }),
        (lock) =>
          Effect.sync(() => {
            lock.users -= 1
            if (lock.users === 0) locks.delete(id)
          })
      ).pipe(
        Effect.flatMap((lock) => Effect.acquireRelease(lock.semaphore.take(1), () => lock.semaphore.release(1))),
        Effect.zipRight(lockAcrossReplicas(id))
      )

    /** Runs `effect` as the only turn in flight for session `id`. */
    const withTurnLock = <A, E, R>(id: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
      Effect.scoped(Effect.zipRight(lockTurn(id), effect))

    const expiredBefore = (now: number) => now - settings.ttlMs

    /**
     * The one owner check: the live session `id` if `owner` owns it. A missing, expired or foreign session reads
     * the same (no row from the same query), so the three cannot be told apart by the answer or by the work done.
     */
    const get = Effect.fn("SessionStore.get")(function*(id: string, owner: SessionOwner) {
      const now = yield* Clock.currentTimeMillis
      const rows = yield* sql`SELECT * FROM sessions WHERE ${
        sql.and([sql`id = ${id}`, sql`cache_key = ${owner}`, sql`updated_at >= ${expiredBefore(now)}`])
      }`.pipe(Effect.mapError(failed("get")))
      if (rows.length === 0) return Option.none<Session>()
      const row = yield* decodeRow(rows[0]).pipe(Effect.mapError(failed("get")))
      return Option.some(
        new Session({
          id: row.id,
          owner: row.cache_key,
          messages: row.messages,
          turns: row.turns,
          promptTokens: row.prompt_tokens,
          completionTokens: row.completion_tokens,
          cachedTokens: row.cached_tokens,
          createdAt: row.created_at,
          updatedAt: row.updated_at
        })
      )
    })

    /**
     * The session a turn of `owner` continues: theirs, or none when the id is free for a new session; fails with
     * `SessionOwnedByAnother` when another owner's live session has this id. Call it holding the turn lock.
     */
    const resume = Effect.fn("SessionStore.resume")(function*(id: string, owner: SessionOwner) {
      const owned = yield* get(id, owner)
      if (Option.isSome(owned)) return owned
      const now = yield* Clock.currentTimeMillis
      const live = yield* sql`SELECT 1 FROM sessions WHERE id = ${id} AND updated_at >= ${expiredBefore(now)}`.pipe(
        Effect.mapError(failed("resume"))
      )
      if (live.length > 0) return yield* new SessionOwnedByAnother({ sessionId: id })
      return owned
    })

    /**
     * Appends a finished turn of `owner`, creating the session on its first turn (over an expired one with the same
     * id). Another owner's live session is never written: its id makes the insert fail. Call it holding the turn lock.
     */
    const appendTurn = Effect.fn("SessionStore.appendTurn")(function*(id: string, owner: SessionOwner, turn: SessionTurn) {
      const now = yield* Clock.currentTimeMillis
      const existing = yield* get(id, owner)
      const messages = [...Option.match(existing, { onNone: () => [], onSome: (session) => session.messages }), ...turn.newMessages, turn.reply]
      const encoded = JSON.stringify(messages)
      if (Option.isNone(existing)) {
        yield* sql.withTransaction(
          Effect.zipRight(
            sql`DELETE FROM sessions WHERE id = ${id} AND updated_at < ${expiredBefore(now)}`,
            sql`INSERT INTO sessions ${
              sql.insert({
                id,
                cache_key: owner,
                messages: encoded,
                turns: 1,
                prompt_tokens: turn.usage.promptTokens,
                completion_tokens: turn.usage.completionTokens,
                cached_tokens: turn.usage.cachedTokens,
                created_at: now,
                updated_at: now
              })
            }`
          )
        ).pipe(Effect.mapError(failed("appendTurn")))
      } else {
        yield* sql`UPDATE sessions SET
          messages = ${encoded},
          turns = turns + 1,
          prompt_tokens = prompt_tokens + ${turn.usage.promptTokens},
          completion_tokens = completion_tokens + ${turn.usage.completionTokens},
          cached_tokens = cached_tokens + ${turn.usage.cachedTokens},
          updated_at = ${now}
          WHERE id = ${id} AND cache_key = ${owner}`.pipe(Effect.mapError(failed("appendTurn")))
      }
    })

    /**
     * Deletes `owner`'s session `id`; true when it existed. The owner check runs before the turn lock is taken, so
     * a request for someone else's busy session answers as fast as one for a missing id; the owner's delete waits
     * for a running turn, which would otherwise save its reply into a new session.
     */
    const remove = Effect.fn("SessionStore.remove")(function*(id: string, owner: SessionOwner) {
      if (Option.isNone(yield* get(id, owner))) return false
      return yield* withTurnLock(
        id,
        Effect.map(
          sql`DELETE FROM sessions WHERE id = ${id} AND cache_key = ${owner} RETURNING id`.pipe(Effect.mapError(failed("remove"))),
          (rows) => rows.length > 0
        )
      )
    })

    /** Deletes every session idle past the TTL; returns how many. */
    const sweepExpired = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const rows = yield* sql`DELETE FROM sessions WHERE updated_at < ${expiredBefore(now)} RETURNING id`
      return rows.length
    }).pipe(Effect.mapError(failed("sweepExpired")))

    /** Stores a Responses API response; responses are immutable, and expire the TTL after they were created. */
    const saveResponse = Effect.fn("SessionStore.saveResponse")(function*(response: StoredResponse) {
      yield* sql`INSERT INTO responses ${
        sql.insert({
          id: response.id,
          cache_key: response.cacheKey,
          messages: JSON.stringify(response.messages),
          body: JSON.stringify(response.body),
          created_at: response.createdAt
        })
      } ON CONFLICT (id) DO UPDATE SET cache_key = excluded.cache_key, messages = excluded.messages, body = excluded.body,
        created_at = excluded.created_at`.pipe(Effect.mapError(failed("saveResponse")))
    })

    /** The live (unexpired) stored response `id`. */
    const getResponse = Effect.fn("SessionStore.getResponse")(function*(id: string) {
      const now = yield* Clock.currentTimeMillis
      const rows = yield* sql`SELECT * FROM responses WHERE id = ${id} AND created_at >= ${expiredBefore(now)}`.pipe(
        Effect.mapError(failed("getResponse"))
      )
      if (rows.length === 0) return Option.none<StoredResponse>()
      const row = yield* decodeResponseRow(rows[0]).pipe(Effect.mapError(failed("getResponse")))
      return Option.some(
        new StoredResponse({ id: row.id, cacheKey: row.cache_key, messages: row.messages, body: row.body, createdAt: row.created_at })
      )
    })

    /** Deletes stored response `id`; true when it existed. */
    const removeResponse = Effect.fn("SessionStore.removeResponse")(function*(id: string) {
      const existing = yield* getResponse(id)
      yield* sql`DELETE FROM responses WHERE id = ${id}`.pipe(Effect.mapError(failed("removeResponse")))
      return Option.isSome(existing)
    })

    const sweepExpiredResponses = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      yield* sql`DELETE FROM responses WHERE created_at < ${expiredBefore(now)}`
    }).pipe(Effect.mapError(failed("sweepExpiredResponses")))

    yield* sweepExpiredResponses.pipe(
      Effect.catchAll((error) => Effect.logWarning("Sweeping expired responses failed", error)),
      Effect.repeat(Schedule.spaced(Duration.millis(settings.sweepIntervalMs))),
      Effect.forkScoped
    )

    yield* sweepExpired.pipe(
      Effect.catchAll((error) => Effect.logWarning("Sweeping expired sessions failed", error)),
      Effect.repeat(Schedule.spaced(Duration.millis(settings.sweepIntervalMs))),
      Effect.forkScoped
    )

    return { get, resume, appendTurn, remove, sweepExpired, lockTurn, withTurnLock, saveResponse, getResponse, removeResponse } as const
  })
}) {
  /** The store on a SQLite file (created if missing). */
  static readonly layerSqlite = (settings: Partial<SessionSettings> & Pick<SessionSettings, "databasePath">) =>
    SessionStore.Default.pipe(
      Layer.provide(SqliteClient.layer({ filename: settings.databasePath })),
      Layer.provide(SessionConfig.layer(settings))
    )

  /** The store on Postgres at `url`, shared by every replica on that database. */
  static readonly layerPg = (url: string, settings: Partial<Omit<SessionSettings, "databasePath">> = {}, options?: PostgresClientOptions) =>
    SessionStore.Default.pipe(
      Layer.provide(postgresClientLayer(url, options)),
      Layer.provide(SessionConfig.layer({ ...settings, databasePath: url }))
    )
}
