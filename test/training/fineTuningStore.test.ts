import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Context, Effect, FastCheck, Layer, Option, TestClock } from "effect"
import { defaultSettings } from "../../src/config/WeftConfig.js"
import { fineTuningSettings } from "../../src/layers.js"
import { FineTuningStore } from "../../src/training/jobs/FineTuningStore.js"
import { queuedJobRow } from "../support/fineTuningRows.js"
import { storeBackends } from "../support/storeBackends.js"

const job = (id: string, priority: number) => queuedJobRow(id, { priority, metadata: { priority: String(priority) } })

// The same cases on SQLite (one machine) and Postgres (the database a cluster's replicas share).
for (const backend of storeBackends()) describe.skipIf(!backend.available)(`FineTuningStore on ${backend.name}`, () => {
  beforeAll(backend.setup, 90_000)
  afterAll(backend.teardown)
  /** A store on a fresh database, made when the test runs (after its backend started). */
  const storeLayer = () => Layer.unwrapEffect(Effect.sync(() => FineTuningStore.Default.pipe(Layer.provide(backend.sqlLayer(backend.freshDatabase())))))
  /** Two replicas' stores, built at once: two connection pools on one fresh database, open until the scope closes. */
  const twoReplicas = () =>
    Effect.gen(function*() {
      const database = backend.freshDatabase()
      const one = () => Effect.map(Layer.build(FineTuningStore.Default.pipe(Layer.provide(Layer.fresh(backend.sqlLayer(database))))), Context.get(FineTuningStore))
      return yield* Effect.all([one(), one()], { concurrency: "unbounded" })
    })

  it.effect.prop("the queue order is highest priority first, FIFO within a priority", [FastCheck.array(FastCheck.integer({ min: -2, max: 2 }), { maxLength: 12 })], ([priorities]) =>
    Effect.gen(function*() {
      const store = yield* FineTuningStore
      yield* Effect.forEach(priorities, (priority, at) => store.addJob(job(`ftjob-${at}`, priority)))
      const order = (yield* store.jobsIn(["queued"])).map((queued) => queued.id)
      const expected = priorities.map((priority, at) => ({ priority, at })).sort((a, b) => b.priority - a.priority || a.at - b.at).map(({ at }) => `ftjob-${at}`)
      expect(order).toEqual(expected)
    }).pipe(Effect.provide(storeLayer())), { fastCheck: { numRuns: backend.name === "postgres" ? 10 : 100 } })

  it.effect("lists jobs and events newest first in cursor pages, and keeps metadata and errors as JSON", () =>
    Effect.gen(function*() {
      const store = yield* FineTuningStore
      yield* Effect.forEach([0, 1, 2], (at) => store.addJob(job(`ftjob-${at}`, 0)))
      const first = yield* store.listJobs(undefined, 2)
      expect(first.data.map((listed) => listed.id)).toEqual(["ftjob-2", "ftjob-1"])
      expect(first.hasMore).toBe(true)
      const second = yield* store.listJobs("ftjob-1", 2)
      expect(second.data.map((listed) => listed.id)).toEqual(["ftjob-0"])
      expect(second.hasMore).toBe(false)

      yield* store.updateJob("ftjob-0", { status: "failed", error: { code: "training_failed", message: "boom", param: null } })
      const failed = yield* store.getJob("ftjob-0")
      expect(failed._tag === "Some" && failed.value).toMatchObject({ status: "failed", error: { message: "boom" }, metadata: { priority: "0" } })

      yield* Effect.forEach([1, 2, 3], (step) => store.addEvent("ftjob-0", { message: `step ${step}`, type: "metrics", data: { step } }))
      const events = yield* store.listEvents("ftjob-0", undefined, 2)
      expect(events.data.map((event) => event.message)).toEqual(["step 3", "step 2"])
      const older = yield* store.listEvents("ftjob-0", events.data[1]!.id, 2)
      expect(older.data.map((event) => event.data)).toEqual([{ step: 1 }])
      expect((yield* store.eventsSince("ftjob-0", 1)).map((event) => event.seq)).toEqual([2, 3])
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a learning-rate multiplier and times after 2038 read back exactly as written", () =>
    Effect.gen(function*() {
      const store = yield* FineTuningStore
      // 2040-01-01: past a 32-bit integer's seconds.
      yield* TestClock.setTime(Date.UTC(2040, 0, 1))
      const written = yield* store.addJob({ ...job("ftjob-lr", 0), learning_rate_multiplier: 0.1, estimated_finish: 2_209_000_000 })
      yield* store.updateJob(written.id, { finished_at: 2_209_000_001, trained_tokens: 123 })
      const read = yield* store.getJob(written.id)
      expect(read._tag === "Some" && read.value).toMatchObject({
        learning_rate_multiplier: 0.1,
        created_at: Math.floor(Date.UTC(2040, 0, 1) / 1000),
        estimated_finish: 2_209_000_000,
        finished_at: 2_209_000_001,
        trained_tokens: 123
      })
      const file = yield* store.addFile({ id: "file-late", filename: "a.jsonl", bytes: 3_000_000_000, purpose: "fine-tune", path: "/f", records: 2 }, new Uint8Array([1]))
      expect(yield* store.listFiles).toEqual([file])
      yield* store.addCheckpoint({ id: "ftckpt-1", job_id: written.id, step: 1, path: "/c", metrics: { train_loss: 0.5 } })
      expect((yield* store.checkpoints(written.id)).map((checkpoint) => checkpoint.created_at)).toEqual([file.created_at])
    }).pipe(Effect.provide(storeLayer())))

  it.effect("keeps an uploaded file's bytes, every byte value, until the file is removed", () =>
    Effect.gen(function*() {
      const store = yield* FineTuningStore
      const content = Uint8Array.from({ length: 512 }, (_, at) => at % 256)
      // A client names the file: any text, NUL included (Postgres text cannot hold NUL).
      const added = yield* store.addFile({ id: "file-bytes", filename: "b\u0000\\0.jsonl", bytes: content.length, purpose: "fine-tune", path: "/b", records: 1 }, content)
      expect(yield* store.getFile("file-bytes")).toEqual(Option.some(added))
      expect(yield* store.listFiles).toEqual([added])
      const stored = yield* store.fileContent("file-bytes")
      expect(stored._tag === "Some" && Array.from(stored.value)).toEqual(Array.from(content))
      yield* store.removeFile("file-bytes")
      expect((yield* store.fileContent("file-bytes"))._tag).toBe("None")
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a database made before job claims gets their columns, and keeps its jobs", () =>
    Effect.gen(function*() {
      // Its 32-bit time columns hold today's times (the case above moves its clock to 2040; in the suite's one
      // process this case once started there).
      yield* TestClock.setTime(Date.UTC(2026, 0, 1))
      const database = backend.freshDatabase()
      const sqlLayer = backend.sqlLayer(database)
      // ft_jobs as it was created before claims.
      yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`CREATE TABLE ft_jobs (
        id TEXT PRIMARY KEY, seq INTEGER NOT NULL, created_at INTEGER NOT NULL, model TEXT NOT NULL, base_path TEXT NOT NULL,
        training_file TEXT NOT NULL, validation_file TEXT, n_epochs INTEGER NOT NULL, batch_size INTEGER NOT NULL,
        learning_rate_multiplier REAL NOT NULL, suffix TEXT, seed INTEGER NOT NULL, metadata TEXT, priority INTEGER NOT NULL,
        status TEXT NOT NULL, fine_tuned_model TEXT, output_path TEXT, error TEXT, finished_at INTEGER,
        trained_tokens INTEGER, estimated_finish INTEGER)`).pipe(Effect.provide(sqlLayer))
      yield* Effect.gen(function*() {
        const store = yield* FineTuningStore
        yield* store.addJob(job("ftjob-old", 0))
        expect(yield* store.claim("ftjob-old", "r", 5)).toBe(true)
        expect(yield* store.claimOf("ftjob-old")).toEqual(Option.some({ status: "running", claimedBy: "r", heartbeatAt: 5, pauseRequested: false }))
      }).pipe(Effect.provide(FineTuningStore.Default.pipe(Layer.provide(sqlLayer))))
    }))

  // A SQLite file belongs to one process: only a cluster's replicas share a database.
  it.live.skipIf(backend.name === "sqlite")("two replicas starting together on one database create its tables, and never take the same job or event number", () =>
    Effect.scoped(Effect.gen(function*() {
      const [a, b] = yield* twoReplicas()
      const ids = Array.from({ length: 16 }, (_, at) => at)
      yield* Effect.all([
        Effect.forEach(ids, (at) => a.addJob(job(`ftjob-a${at}`, 0)), { concurrency: 4 }),
        Effect.forEach(ids, (at) => b.addJob(job(`ftjob-b${at}`, 0)), { concurrency: 4 })
      ], { concurrency: "unbounded" })
      const seqs = (yield* a.jobsIn(["queued"])).map((queued) => queued.seq)
      expect(new Set(seqs).size).toBe(32)
      yield* Effect.all([
        Effect.forEach(ids, (at) => a.addEvent("ftjob-a0", { message: `a ${at}` }), { concurrency: 4 }),
        Effect.forEach(ids, (at) => b.addEvent("ftjob-a0", { message: `b ${at}` }), { concurrency: 4 })
      ], { concurrency: "unbounded" })
      expect((yield* b.eventsSince("ftjob-a0", 0)).map((event) => event.seq)).toEqual(Array.from({ length: 32 }, (_, at) => at + 1))
    })), 60_000)
})

describe("fine-tuning's store under weft serve", () => {
  it("is the cluster's Postgres with --cluster, and the data dir's SQLite file without", () => {
    const cluster = "postgres://weft@db:5432/weft"
    expect(fineTuningSettings({ ...defaultSettings, cluster }).database).toBe(cluster)
    expect(fineTuningSettings(defaultSettings).database).toBeUndefined()
  })
})
