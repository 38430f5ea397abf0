import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Clock, Effect, Layer, Option, Schema } from "effect"
import type { ConfigError, ParseResult } from "effect"
import { createSchema } from "../../storage/createSchema.js"
import { nulSafeText } from "../../storage/nulSafeText.js"
import { lockForTransaction } from "../../storage/pgAdvisoryLocks.js"
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

/** Who trains a running job, and what other replicas asked of it. */
export interface JobClaim {
  readonly status: JobStatus
  readonly claimedBy: string | null
  /** Milliseconds; the training replica renews it while the job trains. */
  readonly heartbeatAt: number | null
  readonly pauseRequested: boolean
}

const claimColumns = ["claimed_by TEXT", "heartbeat_at BIGINT", "pause_requested BIGINT"]

const ClaimRow = Schema.Struct({
  status: JobStatus,
  claimed_by: Schema.NullOr(Schema.String),
  heartbeat_at: Schema.NullOr(SqlInteger),
  pause_requested: Schema.NullOr(SqlInteger)
})

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
        trained_tokens BIGINT, estimated_finish BIGINT, claimed_by TEXT, heartbeat_at BIGINT, pause_requested BIGINT)`,
      sql`CREATE TABLE IF NOT EXISTS ft_events (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL, seq BIGINT NOT NULL, created_at BIGINT NOT NULL, level TEXT NOT NULL,
        message TEXT NOT NULL, type TEXT NOT NULL, data TEXT)`,
      sql`CREATE INDEX IF NOT EXISTS ft_events_job ON ft_events (job_id, seq)`,
      // An uploaded file's bytes, so every replica of a cluster can train on it and serve it.
      sql.onDialectOrElse({
        pg: () => sql`CREATE TABLE IF NOT EXISTS ft_file_contents (file_id TEXT PRIMARY KEY, content BYTEA NOT NULL)`,
        orElse: () => sql`CREATE TABLE IF NOT EXISTS ft_file_contents (file_id TEXT PRIMARY KEY, content BLOB NOT NULL)`
      }),
      sql`CREATE TABLE IF NOT EXISTS ft_checkpoints (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL, step BIGINT NOT NULL, created_at BIGINT NOT NULL, path TEXT NOT NULL,
        metrics TEXT NOT NULL)`
    ])
    // The claim columns came with clustering; a database made before gets them here.
    yield* sql.onDialectOrElse({
      pg: () => createSchema(sql, claimColumns.map((column) => sql.unsafe(`ALTER TABLE ft_jobs ADD COLUMN IF NOT EXISTS ${column}`))),
      orElse: () =>
        Effect.gen(function*() {
          const present = new Set((yield* sql<{ readonly name: string }>`PRAGMA table_info(ft_jobs)`.pipe(Effect.orDie)).map((column) => column.name))
          for (const column of claimColumns) {
            if (!present.has(column.split(" ")[0]!)) yield* sql.unsafe(`ALTER TABLE ft_jobs ADD COLUMN ${column}`).pipe(Effect.orDie)
          }
        })
    })
    // Sequence numbers are MAX + 1: one writer at a time takes one. A SQLite file has one process, so an in-process
    // lock is enough; replicas sharing Postgres take a transaction-scoped advisory lock as well.
    const inProcess = yield* Effect.makeSemaphore(1)
    const sequence = <A, E>(take: Effect.Effect<A, E>): Effect.Effect<A, E | SqlError> =>
      inProcess.withPermits(1)(sql.onDialectOrElse({
        pg: () => sql.withTransaction(Effect.zipRight(lockForTransaction(sql, "weft/ft-sequence"), take)),
        orElse: () => take
      }))
    const now = Effect.map(Clock.currentTimeMillis, (millis) => Math.floor(millis / 1000))

    // A file's name is the client's text: NUL included, which Postgres text cannot hold.
    const filenameText = nulSafeText(sql)
    const decodeFileRow = Schema.decodeUnknown(FileRecord)
    const decodeFile = (row: unknown) => Effect.map(decodeFileRow(row), (file) => ({ ...file, filename: filenameText.decode(file.filename) }))
    const decodeJob = Schema.decodeUnknown(JobRecord)
    const decodeEvent = Schema.decodeUnknown(JobEvent)
    const decodeCheckpoint = Schema.decodeUnknown(CheckpointRecord)

    /** Up to `limit` rows older (by seq) than `after`, newest first; `hasMore` when more follow. */
    const page = <A>(rows: ReadonlyArray<A>, limit: number): Page<A> => ({ data: rows.slice(0, limit), hasMore: rows.length > limit })

    /** Records an uploaded file with its bytes. */
    const addFile = Effect.fn("FineTuningStore.addFile")(function*(file: Omit<FileRecord, "created_at">, content: Uint8Array) {
      const record = { ...file, created_at: yield* now }
      yield* sql.withTransaction(Effect.zipRight(
        sql`INSERT INTO ft_file_contents ${sql.insert({ file_id: file.id, content })}`,
        sql`INSERT INTO ft_files ${sql.insert({ ...record, filename: filenameText.encode(record.filename) })}`
      )).pipe(Effect.mapError(failed("addFile")))
      return record
    })

    /** A file's bytes; none for a file recorded before the database kept them (its bytes are only at its path). */
    const fileContent = Effect.fn("FineTuningStore.fileContent")(function*(id: string) {
      const rows = yield* sql<{ readonly content: Uint8Array }>`SELECT content FROM ft_file_contents WHERE file_id = ${id}`.pipe(
        Effect.mapError(failed("fileContent"))
      )
      return Option.map(Option.fromNullable(rows[0]), (row) => row.content)
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
      yield* sql.withTransaction(Effect.zipRight(sql`DELETE FROM ft_files WHERE id = ${id}`, sql`DELETE FROM ft_file_contents WHERE file_id = ${id}`)).pipe(
        Effect.mapError(failed("removeFile"))
      )
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

    /** An update's column values, its error as JSON. */
    const columnsOf = (update: JobUpdate): Record<string, unknown> =>
      update.error === undefined ? { ...update } : { ...update, error: update.error === null ? null : JSON.stringify(update.error) }

    const updateJob = Effect.fn("FineTuningStore.updateJob")(function*(id: string, update: JobUpdate) {
      const values = columnsOf(update)
      if (Object.keys(values).length === 0) return
      yield* sql`UPDATE ft_jobs SET ${sql.update(values)} WHERE id = ${id}`.pipe(Effect.mapError(failed("updateJob")))
    })

    // The claim protocol, in single conditional UPDATEs (atomic on both databases): among replicas trying at once,
    // exactly one sees its row come back. RETURNING is in SQLite since 3.35 and in Postgres.

    /** Takes a queued job for `replica`: true for the one replica that got it. */
    const claim = Effect.fn("FineTuningStore.claim")(function*(id: string, replica: string, nowMs: number) {
      const rows = yield* sql`UPDATE ft_jobs SET status = ${"running"}, claimed_by = ${replica}, heartbeat_at = ${nowMs}, pause_requested = ${0}
        WHERE id = ${id} AND status = ${"queued"} RETURNING id`.pipe(Effect.mapError(failed("claim")))
      return rows.length > 0
    })

    /** Renews `replica`'s claim on a running job: false when the job is no longer running there (cancelled, taken over). */
    const heartbeat = Effect.fn("FineTuningStore.heartbeat")(function*(id: string, replica: string, nowMs: number) {
      const rows = yield* sql`UPDATE ft_jobs SET heartbeat_at = ${nowMs} WHERE id = ${id} AND claimed_by = ${replica} AND status = ${"running"} RETURNING id`.pipe(
        Effect.mapError(failed("heartbeat"))
      )
      return rows.length > 0
    })

    /** Who trains a job and what was asked of it. */
    const claimOf = Effect.fn("FineTuningStore.claimOf")(function*(id: string) {
      const rows = yield* sql`SELECT status, claimed_by, heartbeat_at, pause_requested FROM ft_jobs WHERE id = ${id}`.pipe(Effect.mapError(failed("claimOf")))
      if (rows.length === 0) return Option.none<JobClaim>()
      const row = yield* Schema.decodeUnknown(ClaimRow)(rows[0]).pipe(Effect.mapError(failed("claimOf")))
      return Option.some<JobClaim>({ status: row.status, claimedBy: row.claimed_by, heartbeatAt: row.heartbeat_at, pauseRequested: (row.pause_requested ?? 0) !== 0 })
    })

    /**
     * Queues again the running jobs whose replica stopped: no heartbeat since `staleBeforeMs`, no claim (a database made
     * before claims), or claimed by `restarted` (this replica's own jobs from before it started). Returns their ids.
     */
    const requeueAbandoned = Effect.fn("FineTuningStore.requeueAbandoned")(function*(staleBeforeMs: number, restarted: string | null) {
      const rows = yield* sql<{ readonly id: string }>`UPDATE ft_jobs SET status = ${"queued"}, claimed_by = NULL, heartbeat_at = NULL
        WHERE ${sql.in("status", ["running", "validating_files"])}
          AND (claimed_by IS NULL OR heartbeat_at IS NULL OR heartbeat_at < ${staleBeforeMs} OR claimed_by = ${restarted ?? ""})
        RETURNING id`.pipe(Effect.mapError(failed("requeueAbandoned")))
      return rows.map((row) => row.id)
    })

    /** Asks the replica training a running job to pause it at its next step boundary; false when it is not running. */
    const requestPause = Effect.fn("FineTuningStore.requestPause")(function*(id: string) {
      const rows = yield* sql`UPDATE ft_jobs SET pause_requested = ${1} WHERE id = ${id} AND status = ${"running"} RETURNING id`.pipe(
        Effect.mapError(failed("requestPause"))
      )
      return rows.length > 0
    })

    /** Moves a job from one of `from` to `update` (a new status) in one step: false when it was in none of them. */
    const transition = Effect.fn("FineTuningStore.transition")(function*(id: string, from: ReadonlyArray<JobStatus>, update: JobUpdate & { readonly status: JobStatus }) {
      const rows = yield* sql`UPDATE ft_jobs SET ${sql.update({ ...columnsOf(update), claimed_by: null, pause_requested: 0 })} WHERE id = ${id} AND ${sql.in("status", from)} RETURNING id`.pipe(
        Effect.mapError(failed("transition"))
      )
      return rows.length > 0
    })

    /** Writes a running job's outcome, only while `replica` still holds its claim: false when it lost it. */
    const finishClaimed = Effect.fn("FineTuningStore.finishClaimed")(function*(id: string, replica: string, update: JobUpdate & { readonly status: JobStatus }) {
      const rows = yield* sql`UPDATE ft_jobs SET ${sql.update({ ...columnsOf(update), claimed_by: null, pause_requested: 0 })} WHERE id = ${id} AND claimed_by = ${replica} AND status = ${"running"} RETURNING id`.pipe(
        Effect.mapError(failed("finishClaimed"))
      )
      return rows.length > 0
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
      fileContent,
      listFiles,
      removeFile,
      addJob,
      getJob,
      listJobs,
      jobsIn,
      jobServing,
      updateJob,
      claim,
      heartbeat,
      claimOf,
      requeueAbandoned,
      requestPause,
      transition,
      finishClaimed,
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
