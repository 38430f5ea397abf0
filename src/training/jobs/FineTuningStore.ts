import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Clock, Effect, Layer, Option, Schema } from "effect"
import type { ConfigError, ParseResult } from "effect"
import { createSchema } from "../../storage/createSchema.js"
import { isPostgresUrl, postgresClientLayer } from "../../storage/postgresClient.js"
import { SqlInteger } from "../../storage/SqlInteger.js"

// Portable SQL only (plain INSERT/UPDATE/SELECT, TEXT/BIGINT/DOUBLE PRECISION columns, no SQLite functions): the same
// service runs on SQLite (one machine) and on Postgres through `@effect/sql-pg` (a cluster's shared database). Times
// are Unix seconds, as OpenAI's objects carry them; integers are BIGINT (Postgres returns them as strings: SqlInteger).

/** The fine-tuning database failed. */
export class FineTuningStoreFailed extends Schema.TaggedError<FineTuningStoreFailed>()("FineTuningStoreFailed", {
  operation: Schema.String,
  cause: Schema.Defect
}) {
  override get message(): string {
    return `the fine-tuning store failed (${this.operation})`
  }
}

/** The states a job goes through; `paused` is the one OpenAI adds with pause/resume. */
export const JobStatus = Schema.Literal("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
export type JobStatus = typeof JobStatus.Type

/** A job that will not train again by itself. */
export const isFinished = (status: JobStatus): boolean => status === "succeeded" || status === "failed" || status === "cancelled"

/** An uploaded file's metadata; its bytes are at `path`. */
export const FileRecord = Schema.Struct({
  id: Schema.String,
  filename: Schema.String,
  bytes: SqlInteger,
  created_at: SqlInteger,
  purpose: Schema.String,
  path: Schema.String,
  /** Valid records the dataset validator counted on upload. */
  records: SqlInteger
})
export type FileRecord = typeof FileRecord.Type

const JobError = Schema.Struct({ code: Schema.String, message: Schema.String, param: Schema.NullOr(Schema.String) })

/** A fine-tuning job as stored: what to train, how, and where it is. */
export const JobRecord = Schema.Struct({
  id: Schema.String,
  /** Creation order: FIFO within a priority, and the order lists page in. */
  seq: SqlInteger,
  created_at: SqlInteger,
  model: Schema.String,
  base_path: Schema.String,
  training_file: Schema.String,
  validation_file: Schema.NullOr(Schema.String),
  n_epochs: SqlInteger,
  batch_size: SqlInteger,
  learning_rate_multiplier: Schema.Number,
  suffix: Schema.NullOr(Schema.String),
  seed: SqlInteger,
  metadata: Schema.NullOr(Schema.parseJson(Schema.Record({ key: Schema.String, value: Schema.String }))),
  priority: SqlInteger,
  status: JobStatus,
  fine_tuned_model: Schema.NullOr(Schema.String),
  output_path: Schema.NullOr(Schema.String),
  error: Schema.NullOr(Schema.parseJson(JobError)),
  finished_at: Schema.NullOr(SqlInteger),
  trained_tokens: Schema.NullOr(SqlInteger),
  estimated_finish: Schema.NullOr(SqlInteger)
})
export type JobRecord = typeof JobRecord.Type

/** One line of a job's log: a message, or a step's metrics. */
export const JobEvent = Schema.Struct({
  id: Schema.String,
  job_id: Schema.String,
  seq: SqlInteger,
  created_at: SqlInteger,
  level: Schema.Literal("info", "warn", "error"),
  message: Schema.String,
  type: Schema.Literal("message", "metrics"),
  data: Schema.NullOr(Schema.parseJson(Schema.Unknown))
})
export type JobEvent = typeof JobEvent.Type

/** A checkpoint a job saved: the weights at `step`, with the metrics of that step. */
export const CheckpointRecord = Schema.Struct({
  id: Schema.String,
  job_id: Schema.String,
  step: SqlInteger,
  created_at: SqlInteger,
  path: Schema.String,
  metrics: Schema.parseJson(Schema.Record({ key: Schema.String, value: Schema.Number }))
})
export type CheckpointRecord = typeof CheckpointRecord.Type

/** A page of a list, newest first, as OpenAI's cursor pages have it. */
export interface Page<A> {
  readonly data: ReadonlyArray<A>
  readonly hasMore: boolean
}

type JobUpdate = Partial<Omit<JobRecord, "id" | "seq" | "metadata" | "error">> & { readonly error?: JobRecord["error"] }

const failed = (operation: string) => (cause: SqlError | ParseResult.ParseError) => new FineTuningStoreFailed({ operation, cause })

/**
 * Files, jobs, events and checkpoints of fine-tuning, in SQL. Every write goes through these methods; sequence
 * numbers (job order, event order) are handed out under one lock, so two writers never take the same one.
 */
export class FineTuningStore extends Effect.Service<FineTuningStore>()("weft/FineTuningStore", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // BIGINT and DOUBLE PRECISION have SQLite's INTEGER and REAL affinity, so SQLite files made before keep working;
    // on Postgres, INTEGER would end times in 2038 and REAL would round 0.1 to a float4.
    yield* createSchema(sql, [
      sql`CREATE TABLE IF NOT EXISTS ft_files (
        id TEXT PRIMARY KEY, filename TEXT NOT NULL, bytes BIGINT NOT NULL, created_at BIGINT NOT NULL,
        purpose TEXT NOT NULL, path TEXT NOT NULL, records BIGINT NOT NULL)`,
      sql`CREATE TABLE IF NOT EXISTS ft_jobs (
        id TEXT PRIMARY KEY, seq BIGINT NOT NULL, created_at BIGINT NOT NULL, model TEXT NOT NULL, base_path TEXT NOT NULL,
        training_file TEXT NOT NULL, validation_file TEXT, n_epochs BIGINT NOT NULL, batch_size BIGINT NOT NULL,
        learning_rate_multiplier DOUBLE PRECISION NOT NULL, suffix TEXT, seed BIGINT NOT NULL, metadata TEXT, priority BIGINT NOT NULL,
        status TEXT NOT NULL, fine_tuned_model TEXT, output_path TEXT, error TEXT, finished_at BIGINT,
        trained_tokens BIGINT, estimated_finish BIGINT)`,
      sql`CREATE TABLE IF NOT EXISTS ft_events (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL, seq BIGINT NOT NULL, created_at BIGINT NOT NULL, level TEXT NOT NULL,
        message TEXT NOT NULL, type TEXT NOT NULL, data TEXT)`,
      sql`CREATE INDEX IF NOT EXISTS ft_events_job ON ft_events (job_id, seq)`,
      sql`CREATE TABLE IF NOT EXISTS ft_checkpoints (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL, step BIGINT NOT NULL, created_at BIGINT NOT NULL, path TEXT NOT NULL,
        metrics TEXT NOT NULL)`
    ])
    // Sequence numbers are MAX + 1: one writer at a time takes one. A SQLite file has one process, so an in-process
    // lock is enough; replicas sharing Postgres take a transaction-scoped advisory lock as well.
    const inProcess = yield* Effect.makeSemaphore(1)
    const sequence = <A, E>(take: Effect.Effect<A, E>): Effect.Effect<A, E | SqlError> =>
      inProcess.withPermits(1)(sql.onDialectOrElse({
        pg: () => sql.withTransaction(Effect.zipRight(sql`SELECT pg_advisory_xact_lock(hashtextextended('weft/ft-sequence', 0))`, take)),
        orElse: () => take
      }))
    const now = Effect.map(Clock.currentTimeMillis, (millis) => Math.floor(millis / 1000))

    const decodeFile = Schema.decodeUnknown(FileRecord)
    const decodeJob = Schema.decodeUnknown(JobRecord)
    const decodeEvent = Schema.decodeUnknown(JobEvent)
    const decodeCheckpoint = Schema.decodeUnknown(CheckpointRecord)

    /** Up to `limit` rows older (by seq) than `after`, newest first; `hasMore` when more follow. */
    const page = <A>(rows: ReadonlyArray<A>, limit: number): Page<A> => ({ data: rows.slice(0, limit), hasMore: rows.length > limit })

    const addFile = Effect.fn("FineTuningStore.addFile")(function*(file: Omit<FileRecord, "created_at">) {
      const record = { ...file, created_at: yield* now }
      yield* sql`INSERT INTO ft_files ${sql.insert(record)}`.pipe(Effect.mapError(failed("addFile")))
      return record
    })

    const getFile = Effect.fn("FineTuningStore.getFile")(function*(id: string) {
      const rows = yield* sql`SELECT * FROM ft_files WHERE id = ${id}`.pipe(Effect.mapError(failed("getFile")))
      return rows.length === 0 ? Option.none() : Option.some(yield* decodeFile(rows[0]).pipe(Effect.mapError(failed("getFile"))))
    })

    const listFiles = sql`SELECT * FROM ft_files ORDER BY created_at DESC, id DESC`.pipe(
      Effect.flatMap(Effect.forEach((row) => decodeFile(row))),
      Effect.mapError(failed("listFiles")),
      Effect.withSpan("FineTuningStore.listFiles")
    )

    const removeFile = Effect.fn("FineTuningStore.removeFile")(function*(id: string) {
      yield* sql`DELETE FROM ft_files WHERE id = ${id}`.pipe(Effect.mapError(failed("removeFile")))
    })

    const addJob = Effect.fn("FineTuningStore.addJob")(function*(job: Omit<JobRecord, "seq" | "created_at">) {
      return yield* sequence(Effect.gen(function*() {
        const last = yield* sql<{ readonly seq: number | null }>`SELECT MAX(seq) AS seq FROM ft_jobs`
        const record: JobRecord = { ...job, seq: Number(last[0]?.seq ?? 0) + 1, created_at: yield* now }
        yield* sql`INSERT INTO ft_jobs ${
          sql.insert({ ...record, metadata: record.metadata === null ? null : JSON.stringify(record.metadata), error: record.error === null ? null : JSON.stringify(record.error) })
        }`
        return record
      })).pipe(Effect.mapError(failed("addJob")))
    })

    const getJob = Effect.fn("FineTuningStore.getJob")(function*(id: string) {
      const rows = yield* sql`SELECT * FROM ft_jobs WHERE id = ${id}`.pipe(Effect.mapError(failed("getJob")))
      return rows.length === 0 ? Option.none() : Option.some(yield* decodeJob(rows[0]).pipe(Effect.mapError(failed("getJob"))))
    })

    const jobsWhere = (operation: string, rows: Effect.Effect<ReadonlyArray<unknown>, SqlError>) =>
      rows.pipe(Effect.flatMap(Effect.forEach((row) => decodeJob(row))), Effect.mapError(failed(operation)))

    /** Jobs newest first, after the job `after` (a cursor from the previous page). */
    const listJobs = Effect.fn("FineTuningStore.listJobs")(function*(after: string | undefined, limit: number) {
      const cursor = after === undefined ? undefined : Option.getOrUndefined(yield* getJob(after))
      const rows = yield* jobsWhere(
        "listJobs",
        cursor === undefined
          ? sql`SELECT * FROM ft_jobs ORDER BY seq DESC LIMIT ${limit + 1}`
          : sql`SELECT * FROM ft_jobs WHERE seq < ${cursor.seq} ORDER BY seq DESC LIMIT ${limit + 1}`
      )
      return page(rows, limit)
    })

    /** Jobs in these states, in queue order: highest priority first, FIFO within a priority. */
    const jobsIn = (statuses: ReadonlyArray<JobStatus>) =>
      jobsWhere("jobsIn", sql`SELECT * FROM ft_jobs WHERE ${sql.in("status", statuses)} ORDER BY priority DESC, seq ASC`)

    /** The succeeded job whose model is `model`, if any. */
    const jobServing = (model: string) =>
      Effect.map(jobsWhere("jobServing", sql`SELECT * FROM ft_jobs WHERE fine_tuned_model = ${model} AND status = ${"succeeded"}`), (rows) => Option.fromNullable(rows[0]))

    const updateJob = Effect.fn("FineTuningStore.updateJob")(function*(id: string, update: JobUpdate) {
      const values: Record<string, unknown> = { ...update }
      if (update.error !== undefined) values["error"] = update.error === null ? null : JSON.stringify(update.error)
      if (Object.keys(values).length === 0) return
      yield* sql`UPDATE ft_jobs SET ${sql.update(values)} WHERE id = ${id}`.pipe(Effect.mapError(failed("updateJob")))
    })

    const addEvent = Effect.fn("FineTuningStore.addEvent")(function*(
      jobId: string,
      event: { readonly level?: JobEvent["level"]; readonly message: string; readonly type?: JobEvent["type"]; readonly data?: unknown }
    ) {
      yield* sequence(Effect.gen(function*() {
        const last = yield* sql<{ readonly seq: number | null }>`SELECT MAX(seq) AS seq FROM ft_events WHERE job_id = ${jobId}`
        const seq = Number(last[0]?.seq ?? 0) + 1
        yield* sql`INSERT INTO ft_events ${
          sql.insert({
            id: `ftevent-${jobId.replace(/^ftjob-/, "")}-${seq}`,
            job_id: jobId,
            seq,
            created_at: yield* now,
            level: event.level ?? "info",
            message: event.message,
            type: event.type ?? "message",
            data: event.data === undefined ? null : JSON.stringify(event.data)
          })
        }`
      })).pipe(Effect.mapError(failed("addEvent")))
    })

    const eventsWhere = (rows: Effect.Effect<ReadonlyArray<unknown>, SqlError>) =>
      rows.pipe(Effect.flatMap(Effect.forEach((row) => decodeEvent(row))), Effect.mapError(failed("events")))

    /** A job's events newest first, after the event `after`. */
    const listEvents = Effect.fn("FineTuningStore.listEvents")(function*(jobId: string, after: string | undefined, limit: number) {
      const cursor = after === undefined ? [] : yield* eventsWhere(sql`SELECT * FROM ft_events WHERE id = ${after} AND job_id = ${jobId}`)
      const rows = yield* eventsWhere(
        cursor[0] === undefined
          ? sql`SELECT * FROM ft_events WHERE job_id = ${jobId} ORDER BY seq DESC LIMIT ${limit + 1}`
          : sql`SELECT * FROM ft_events WHERE job_id = ${jobId} AND seq < ${cursor[0].seq} ORDER BY seq DESC LIMIT ${limit + 1}`
      )
      return page(rows, limit)
    })

    /** A job's events after sequence number `seq`, oldest first (what a live stream sends next). */
    const eventsSince = (jobId: string, seq: number) =>
      eventsWhere(sql`SELECT * FROM ft_events WHERE job_id = ${jobId} AND seq > ${seq} ORDER BY seq ASC`)

    const addCheckpoint = Effect.fn("FineTuningStore.addCheckpoint")(function*(checkpoint: Omit<CheckpointRecord, "created_at">) {
      yield* sql`INSERT INTO ft_checkpoints ${sql.insert({ ...checkpoint, created_at: yield* now, metrics: JSON.stringify(checkpoint.metrics) })}`.pipe(
        Effect.mapError(failed("addCheckpoint"))
      )
    })

    /** A job's checkpoints, latest step first. */
    const checkpoints = Effect.fn("FineTuningStore.checkpoints")(function*(jobId: string) {
      return yield* sql`SELECT * FROM ft_checkpoints WHERE job_id = ${jobId} ORDER BY step DESC`.pipe(
        Effect.flatMap(Effect.forEach((row) => decodeCheckpoint(row))),
        Effect.mapError(failed("checkpoints"))
      )
    })

    return {
      addFile,
      getFile,
      listFiles,
      removeFile,
      addJob,
      getJob,
      listJobs,
      jobsIn,
      jobServing,
      updateJob,
      addEvent,
      listEvents,
      eventsSince,
      addCheckpoint,
      checkpoints
    } as const
  })
}) {
  /** The store on a SQLite file (created if missing). */
  static readonly layerSqlite = (databasePath: string) => FineTuningStore.Default.pipe(Layer.provide(SqliteClient.layer({ filename: databasePath })))

  /** The store on a cluster's Postgres (a `postgres://` URL), shared by its replicas, or else on a SQLite file. */
  static readonly layer = (location: string): Layer.Layer<FineTuningStore, ConfigError.ConfigError | SqlError> =>
    isPostgresUrl(location) ? FineTuningStore.Default.pipe(Layer.provide(postgresClientLayer(location))) : FineTuningStore.layerSqlite(location)
}
