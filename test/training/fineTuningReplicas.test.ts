// Fine-tuning on a cluster: two FineTuningJobs services (two replicas, each with its own data dir) on two connection
// pools to one Postgres database. No HTTP servers: the services are what the routes call.
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Schedule } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { observedEngineLayer } from "../../src/host/LocalEngine.js"
import { ModelRegistry } from "../../src/host/ModelRegistry.js"
import { generateModel } from "../../src/model/generateModel.js"
import { postgresClientLayer } from "../../src/storage/postgresClient.js"
import { FineTuningConfig, FineTuningJobs } from "../../src/training/jobs/FineTuningJobs.js"
import type { FineTuningSettings, JobRequest } from "../../src/training/jobs/FineTuningJobs.js"
import { FineTuningStore, isFinished } from "../../src/training/jobs/FineTuningStore.js"
import type { JobRecord } from "../../src/training/jobs/FineTuningStore.js"
import { queuedJobRow } from "../support/fineTuningRows.js"
import { postgresAvailable, startPostgres, type TestPostgres } from "../support/postgres.js"
import { simEngine } from "../support/simEngine.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-ft-replicas-"))
const baseId = "tiny-f32"
let modelPath = ""
let server: TestPostgres | undefined
let databases = 0

const available = postgresAvailable() || process.env.CI !== undefined

/** A learnable pattern as JSONL: whatever the subject, the answer is the same. */
const patternJsonl = (count: number) =>
  Array.from({ length: count }, (_, at) => JSON.stringify({ prompt: `Q: where is the thing ${at}?\nA:`, completion: " in the garden\n" })).join("\n")

const freshDatabase = () => {
  databases += 1
  return server!.createDatabase(`ft_replicas_${databases}`)
}

/** One replica's settings: training on 1 thread, a checkpoint after every step, fast heartbeats. */
const settingsOf = (name: string, overrides: Partial<FineTuningSettings>): FineTuningSettings => ({
  dataDir: path.join(dir, `${name}-${databases}`),
  replicaId: name,
  heartbeatMs: 200,
  staleAfterMs: 60_000,
  concurrency: 1,
  trainingThreads: 1,
  maxUploadBytes: 1024 * 1024,
  checkpointEvery: 1,
  baseLearningRate: 1e-2,
  baseModels: { [baseId]: modelPath },
  // A fine-tuned model is served on the simulated engine: these tests are about where jobs run.
  serveModel: (id) => ({ id, engine: observedEngineLayer(simEngine()) }),
  ...overrides
})

const storeOn = (database: string) => Layer.orDie(FineTuningStore.Default.pipe(Layer.provide(Layer.fresh(postgresClientLayer(database)))))

/** A replica on `database`, open until the test's scope closes. */
const replica = (database: string, name: string, overrides: Partial<FineTuningSettings> = {}) =>
  Effect.map(
    Layer.build(FineTuningJobs.Default.pipe(
      Layer.provide(storeOn(database)),
      Layer.provide(Layer.succeed(FineTuningConfig, settingsOf(name, overrides))),
      Layer.provide(ModelRegistry.layer([]))
    )),
    Context.get(FineTuningJobs)
  )

/** The database's store as a third party sees it (to arrange rows, and read claims). */
const storeOf = (database: string) => Effect.map(Layer.build(storeOn(database)), Context.get(FineTuningStore))

const upload = (jobs: FineTuningJobs, name: string, content: string) =>
  Effect.gen(function*() {
    const source = path.join(dir, `${name}-${databases}`)
    fs.writeFileSync(source, content)
    return yield* jobs.uploadFile({ filename: name, source, purpose: "fine-tune" })
  })

const request = (trainingFile: string): JobRequest => ({
  model: baseId,
  trainingFile,
  validationFile: undefined,
  nEpochs: 1,
  batchSize: 1,
  learningRateMultiplier: 1,
  suffix: undefined,
  seed: 1,
  metadata: undefined,
  priority: 0
})

/** Polls the job until `done` holds. */
const until = (jobs: FineTuningJobs, id: string, done: (job: JobRecord) => boolean) =>
  jobs.getJob(id).pipe(Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: done }), Effect.zipRight(jobs.getJob(id)))

const messagesOf = (jobs: FineTuningJobs, id: string) =>
  Effect.map(jobs.eventsSince(id, 0), (events) => events.map((event) => event.message))

/** A queued job row as another replica would have written it; its files do not exist, so a run of it fails at once. */
const queuedRow = (id: string) => queuedJobRow(id, { model: baseId, base_path: "/nowhere.gguf", training_file: "file-missing" })

const started = (messages: ReadonlyArray<string>) => messages.filter((message) => message === "Fine-tuning job started").length

describe.skipIf(!available)("fine-tuning on a cluster's replicas", () => {
  beforeAll(async () => {
    server = await startPostgres()
    modelPath = await Effect.runPromise(generateModel({ preset: "tiny", weights: "f32", contextLength: 256, out: path.join(dir, "tiny-f32.gguf") })).then((model) => model.path)
  }, 120_000)
  afterAll(async () => {
    await server?.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it.scopedLive("a file uploaded to one replica is read on another, and a job created there trains on it", () =>
    Effect.gen(function*() {
      const database = freshDatabase()
      const a = yield* replica(database, "a", { concurrency: 0 })
      const b = yield* replica(database, "b")
      const content = patternJsonl(2)
      const file = yield* upload(a, "two.jsonl", content)
      // The replicas share this machine's disk; on a cluster, replica a's disk is on another machine.
      fs.rmSync(path.join(dir, `a-${databases}`), { recursive: true })
      expect(Buffer.from(yield* b.fileContent(file.id)).toString()).toBe(content)

      const job = yield* b.createJob(request(file.id))
      const finished = yield* until(b, job.id, (current) => isFinished(current.status))
      expect(finished).toMatchObject({ status: "succeeded", error: null })

      yield* b.deleteFile(file.id)
      expect(Option.isNone(Option.fromNullable((yield* a.listFiles).find((listed) => listed.id === file.id)))).toBe(true)
    }), 300_000)

  it.scopedLive("of replicas starting together, exactly one claims and runs each queued job", () =>
    Effect.gen(function*() {
      const database = freshDatabase()
      const store = yield* storeOf(database)
      const ids = Array.from({ length: 6 }, (_, at) => `ftjob-q${at}`)
      yield* Effect.forEach(ids, (id) => store.addJob(queuedRow(id)))
      const replicas = yield* Effect.all([replica(database, "a", { concurrency: 6 }), replica(database, "b", { concurrency: 6 }), replica(database, "c", { concurrency: 6 })], {
        concurrency: "unbounded"
      })
      for (const id of ids) {
        yield* until(replicas[0], id, (current) => isFinished(current.status))
        expect(started(yield* messagesOf(replicas[0], id))).toBe(1)
      }
      // The claim itself: of replicas trying at once, one wins.
      yield* store.addJob(queuedRow("ftjob-race"))
      const won = yield* Effect.all(["x", "y", "z", "w"].map((name) => store.claim("ftjob-race", name, 0)), { concurrency: "unbounded" })
      expect(won.filter(Boolean)).toHaveLength(1)
    }), 120_000)

  it.scopedLive("a starting replica queues again only the running jobs whose replica stopped renewing its claim", () =>
    Effect.gen(function*() {
      const database = freshDatabase()
      const store = yield* storeOf(database)
      yield* store.addJob(queuedRow("ftjob-abandoned"))
      yield* store.addJob(queuedRow("ftjob-alive"))
      expect(yield* store.claim("ftjob-abandoned", "gone", Date.now() - 120_000)).toBe(true)
      expect(yield* store.claim("ftjob-alive", "alive", Date.now())).toBe(true)

      const b = yield* replica(database, "b")
      const requeued = "The replica training the job stopped renewing its claim: the job is queued to continue from its latest checkpoint"
      yield* messagesOf(b, "ftjob-abandoned").pipe(Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (messages) => messages.includes(requeued) }))
      expect(yield* messagesOf(b, "ftjob-alive")).toEqual([])
      expect(yield* store.claimOf("ftjob-alive")).toEqual(Option.some({ status: "running", claimedBy: "alive", heartbeatAt: expect.any(Number), pauseRequested: false }))
    }), 120_000)

  it.scopedLive("a job whose replica stopped is taken over by another, which resumes it from its checkpoint", () =>
    Effect.gen(function*() {
      const database = freshDatabase()
      const b = yield* replica(database, "b", { concurrency: 0 })
      const file = yield* upload(b, "many.jsonl", patternJsonl(100))
      const job = yield* b.createJob(request(file.id))
      // Replica a trains until a checkpoint is saved, then stops (its scope closes) without giving the job back.
      yield* Effect.scoped(Effect.gen(function*() {
        const a = yield* replica(database, "a")
        yield* a.checkpoints(job.id).pipe(Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (saved) => saved.length > 0 }))
      }))
      expect(yield* b.getJob(job.id)).toMatchObject({ status: "running" })
      // Replica c, a second after a's last heartbeat, queues it again and trains it to the end from that checkpoint.
      const c = yield* replica(database, "c", { staleAfterMs: 1_000 })
      expect(yield* until(c, job.id, (current) => isFinished(current.status))).toMatchObject({ status: "succeeded" })
      const messages = yield* messagesOf(c, job.id)
      expect(messages).toContain("The replica training the job stopped renewing its claim: the job is queued to continue from its latest checkpoint")
      expect(messages.some((message) => message.startsWith("Fine-tuning job resumed from the checkpoint at step"))).toBe(true)
    }), 300_000)

  it.scopedLive("pause and cancel asked on a replica that is not training the job are honoured by the one that is", () =>
    Effect.gen(function*() {
      const database = freshDatabase()
      yield* replica(database, "a")
      const b = yield* replica(database, "b", { concurrency: 0 })
      const file = yield* upload(b, "many.jsonl", patternJsonl(100))
      const job = yield* b.createJob(request(file.id))
      const stepped = (events: ReadonlyArray<{ readonly type: string }>) => events.some((event) => event.type === "metrics")
      yield* b.eventsSince(job.id, 0).pipe(Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: stepped }))

      const paused = yield* b.pause(job.id)
      expect(paused.status).toBe("paused")
      expect((yield* messagesOf(b, job.id)).some((message) => /^Job paused at step \d+$/.test(message))).toBe(true)

      yield* b.resume(job.id)
      yield* b.eventsSince(job.id, 0).pipe(Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (events) => events.some((event) => event.data !== null && typeof event.data === "object" && "resumed_from_step" in event.data) }))
      const cancelled = yield* b.cancel(job.id)
      expect(cancelled.status).toBe("cancelled")
      // Replica a drops the run: its one training slot frees, so it trains the next job; the cancelled one stays so.
      const next = yield* b.createJob(request((yield* upload(b, "two.jsonl", patternJsonl(2))).id))
      expect(yield* until(b, next.id, (current) => isFinished(current.status))).toMatchObject({ status: "succeeded" })
      expect(yield* b.getJob(job.id)).toMatchObject({ status: "cancelled", fine_tuned_model: null })
      const claim = yield* Effect.flatMap(storeOf(database), (store) => store.claimOf(job.id))
      expect(claim).toEqual(Option.some({ status: "cancelled", claimedBy: null, heartbeatAt: expect.any(Number), pauseRequested: false }))
    }), 300_000)
})
