import { Clock, Effect, Fiber, Metric, Option, Queue, Schema, Stream, SubscriptionRef } from "effect"
import type { Chunk } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { WeftMetrics } from "../observability/WeftMetrics.js"

/** One answered HTTP request. Never a key, a query string, a body, or prompt or completion text. */
export const AuditRequest = Schema.Struct({
  kind: Schema.Literal("request"),
  time: Schema.String,
  requestId: Schema.String,
  traceId: Schema.optional(Schema.String),
  keyId: Schema.optional(Schema.String),
  tenant: Schema.optional(Schema.String),
  method: Schema.String,
  /** Without the query string, which may carry credentials. */
  path: Schema.String,
  status: Schema.Number,
  durationMs: Schema.Number,
  promptTokens: Schema.optional(Schema.Number),
  completionTokens: Schema.optional(Schema.Number)
})

/** A change to keys or tenants: who made it (a key id, or `cli`), what they did, and to what. */
export const AuditChange = Schema.Struct({
  kind: Schema.Literal("change"),
  time: Schema.String,
  who: Schema.String,
  /** `key.create`, `key.revoke`, `key.rotate`, `tenant.set`, … */
  action: Schema.String,
  /** The key id or tenant name changed. */
  target: Schema.String,
  tenant: Schema.optional(Schema.String)
})

/** One line of the audit log. */
export const AuditRecord = Schema.Union(AuditRequest, AuditChange)
export type AuditRecord = typeof AuditRecord.Type

/** What a caller records; the log stamps the time. */
export type AuditEntry = AuditRecord extends infer R ? (R extends AuditRecord ? Omit<R, "time"> : never) : never

/** Which records `read` returns. */
export interface AuditQuery {
  /** Only records at or after this time (ms since the epoch). */
  readonly since?: number | undefined
  readonly tenant?: string | undefined
  /** The most recent this many matching records. */
  readonly limit: number
}

export interface AuditSettings {
  /** The JSONL file; `undefined` keeps no log. */
  readonly path: string | undefined
  /** Records that may wait to be written before new ones are dropped (and counted in `weft_audit_dropped_total`). */
  readonly queueLimit?: number | undefined
}

/** Anything shaped like an API key is cut out, whatever field it turned up in. */
const keyPattern = /sk-weft-[A-Za-z0-9_-]*/g

const encode = Schema.encodeSync(AuditRecord)

/** A record as one JSON line: only the schema's fields (`encode` drops any other), and never a key. */
export const auditLine = (record: AuditRecord): string => `${JSON.stringify(encode(record)).replace(keyPattern, "sk-weft-[redacted]")}\n`

const decodeLine = Schema.decodeUnknownOption(Schema.parseJson(AuditRecord))

/**
 * The append-only audit log: one JSON line per request and per key or tenant change. Recording never waits on the
 * disk: records go to a bounded queue that one fiber appends to the file, in order; the queue is written out when the
 * log's scope closes (shutdown). Invariant: `pending` counts records queued and not yet appended, so a reader can wait
 * until everything recorded so far is in the file.
 */
export class AuditLog extends Effect.Service<AuditLog>()("weft/AuditLog", {
  scoped: Effect.fnUntraced(function*(settings: AuditSettings) {
    const file = settings.path
    const queue = yield* Queue.dropping<string>(settings.queueLimit ?? 10_000)
    const pending = yield* SubscriptionRef.make(0)

    const append = (lines: Chunk.Chunk<string>) =>
      Effect.tryPromise(() => fs.promises.appendFile(file ?? "", Array.from(lines).join(""))).pipe(
        Effect.catchAll((error) => Effect.logError("The audit log could not be written", error)),
        Effect.zipRight(SubscriptionRef.update(pending, (count) => count - lines.length)),
        // A batch taken from the queue is written whole, even at shutdown.
        Effect.uninterruptible
      )

    if (file !== undefined) {
      yield* Effect.promise(() => fs.promises.mkdir(path.dirname(file), { recursive: true }))
      const writer = yield* Effect.forkDaemon(Effect.forever(Effect.flatMap(Queue.takeBetween(queue, 1, 1000), append)))
      yield* Effect.addFinalizer(() => Effect.zipRight(Fiber.interrupt(writer), Effect.flatMap(Queue.takeAll(queue), append)))
    }

    /** Queues a record for the file; when the queue is full, drops it and counts the drop. */
    const record = (entry: AuditEntry): Effect.Effect<void> =>
      file === undefined ? Effect.void : Effect.gen(function*() {
        const time = new Date(yield* Clock.currentTimeMillis).toISOString()
        const line = auditLine({ ...entry, time } as AuditRecord)
        yield* SubscriptionRef.update(pending, (count) => count + 1)
        if (!(yield* Queue.offer(queue, line))) {
          yield* SubscriptionRef.update(pending, (count) => count - 1)
          yield* Metric.increment(WeftMetrics.auditDropped)
        }
      })

    /** Waits (at most a second) until every record queued so far is in the file. */
    const flushed = pending.changes.pipe(Stream.takeUntil((count) => count <= 0), Stream.runDrain, Effect.timeoutOption("1 second"), Effect.asVoid)

    /** The most recent matching records, oldest first. */
    const read = Effect.fn("AuditLog.read")(function*(query: AuditQuery) {
      if (file === undefined) return { records: [] as ReadonlyArray<AuditRecord>, hasMore: false }
      yield* flushed
      const text = yield* Effect.promise(() => fs.promises.readFile(file, "utf8").catch(() => ""))
      // A line that does not decode (cut short by a crash, written by hand) is skipped.
      const matching = text.split("\n").flatMap((line) => Option.toArray(decodeLine(line))).filter((one) =>
        (query.since === undefined || Date.parse(one.time) >= query.since) && (query.tenant === undefined || one.tenant === query.tenant)
      )
      return { records: matching.slice(-query.limit), hasMore: matching.length > query.limit }
    })

    return { record, read, path: file } as const
  })
}) {}
