import * as fs from "node:fs/promises"
import { randomBytes } from "node:crypto"
import * as os from "node:os"
import * as path from "node:path"
import { Cause, Clock, Context, Deferred, Effect, Either, Fiber, HashMap, Layer, Option, Queue, Ref, Schedule } from "effect"
import type { ModelDefinition } from "../../host/ModelRegistry.js"
import { ModelRegistry } from "../../host/ModelRegistry.js"
import { formatLocation } from "../datasets/DatasetRecord.js"
import { datasetFileType } from "../datasets/DatasetReader.js"
import { validateDataset } from "../datasets/DatasetValidator.js"
import { requireF32, train, TrainingStopped } from "../Trainer.js"
import { verifyCheckpoint } from "../Checkpoints.js"
import type { TrainingProgress } from "../Trainer.js"
import { DatasetRejected, FineTuningObjectNotFound, JobParamRejected, JobStateConflict } from "./FineTuningErrors.js"
import { FineTuningStore, isFinished } from "./FineTuningStore.js"
import type { FileRecord, JobRecord, JobStatus } from "./FineTuningStore.js"

/** Where fine-tuning keeps its files and jobs, and how much of the machine training may take. */
export interface FineTuningSettings {
  /** Uploaded files go under `<dataDir>/files`, each job's checkpoints and result under `<dataDir>/fine_tuning/<job>`. */
  readonly dataDir: string
  /** Where files and jobs are recorded: a cluster's `postgres://` URL (shared by its replicas); default `<dataDir>/fine_tuning.sqlite`. */
  readonly database?: string | undefined
  /** This replica's name in job claims; default: one kept in `<dataDir>/fine_tuning/replica-id.<host>`, so a restart knows its jobs. */
  readonly replicaId?: string | undefined
  /** How often a training replica renews its claim on a job, and looks for jobs queued elsewhere (default 5 s). */
  readonly heartbeatMs?: number | undefined
  /** A running job whose claim was not renewed for this long is queued again, for any replica (default 30 s). */
  readonly staleAfterMs?: number | undefined
  /** Jobs that train at once on this replica; the rest wait in the queue. */
  readonly concurrency: number
  /** CPU threads one training job uses. */
  readonly trainingThreads: number
  readonly maxUploadBytes: number
  /** A checkpoint every this many steps (and at each epoch's end). */
  readonly checkpointEvery: number
  /** The learning rate `learning_rate_multiplier` multiplies. */
  readonly baseLearningRate: number
  /** The served models that can be fine-tuned, by id: their F32 GGUF files. */
  readonly baseModels: Readonly<Record<string, string>>
  /** How a fine-tuned GGUF is served under its `ft:` id. */
  readonly serveModel: (id: string, gguf: string) => ModelDefinition & { readonly id: string }
}

export class FineTuningConfig extends Context.Tag("weft/FineTuningConfig")<FineTuningConfig, FineTuningSettings>() {}

/** Half the cores, at least one: training's default share, so serving keeps the rest. */
export const defaultTrainingThreads = (): number => Math.max(1, Math.floor(os.availableParallelism() / 2))

/** A job as `POST /v1/fine_tuning/jobs` asks for it, decoded and defaulted. */
export interface JobRequest {
  readonly model: string
  readonly trainingFile: string
  readonly validationFile: string | undefined
  readonly nEpochs: number
  readonly batchSize: number
  readonly learningRateMultiplier: number
  readonly suffix: string | undefined
  readonly seed: number | undefined
  readonly metadata: Readonly<Record<string, string>> | undefined
  /** Higher trains first; FIFO within a priority (Weft's extension, `metadata.priority`). */
  readonly priority: number
}

/** OpenAI's name for a fine-tuned model: `ft:<base>:<suffix>:<job>`. */
export const fineTunedModelId = (job: Pick<JobRecord, "id" | "model" | "suffix">): string =>
  `ft:${job.model}:${job.suffix ?? ""}:${job.id.replace(/^ftjob-/, "")}`

const newId = (prefix: string): string => `${prefix}-${randomBytes(12).toString("base64url")}`

interface Running {
  readonly fiber: Fiber.RuntimeFiber<void>
  /** Set by `pause`: the run stops at its next step boundary with a checkpoint. */
  readonly pauseRequested: Ref.Ref<boolean>
}

const problemLimit = 5

/** The replica id kept in `dir`, made on first use; named by host, so replicas whose data dirs are shared storage differ. */
const persistentReplicaId = async (dir: string): Promise<string> => {
  const file = path.join(dir, `replica-id.${os.hostname()}`)
  await fs.mkdir(dir, { recursive: true })
  const existing = await fs.readFile(file, "utf8").then((text) => text.trim(), () => "")
  if (existing !== "") return existing
  const made = `${os.hostname()}-${randomBytes(6).toString("hex")}`
  await fs.writeFile(file, made)
  return made
}

/**
 * Fine-tuning: uploaded datasets, and jobs that wait in a priority queue (FIFO within a priority) and train as fibers,
 * `concurrency` at a time, persisted in `FineTuningStore`. A job that succeeds is served at once under its `ft:` id.
 * The store may be shared by a cluster's replicas: a replica trains a queued job only once it has claimed it (one
 * conditional UPDATE, so exactly one replica wins), renews the claim every `heartbeatMs` while training, and queues
 * again the running jobs whose claim went stale (their replica stopped), and on start its own. They resume from their
 * latest checkpoint. Cancel and pause asked of another replica's job are written to the job's row; the training replica
 * reads the row at every step boundary.
 *
 * Invariant: `running` holds exactly the jobs whose run fiber is alive; only `start` (after a won claim) adds to it and
 * only the run's own finalizer removes from it, and only the run fiber writes `succeeded`/`failed`/`paused` of its job,
 * and only while its claim holds.
 */
export class FineTuningJobs extends Effect.Service<FineTuningJobs>()("weft/FineTuningJobs", {
  scoped: Effect.gen(function*() {
    const settings = yield* FineTuningConfig
    const store = yield* FineTuningStore
    const registry = yield* ModelRegistry
    const scope = yield* Effect.scope
    const filesDir = path.join(settings.dataDir, "files")
    const jobsDir = path.join(settings.dataDir, "fine_tuning")
    yield* Effect.promise(() => fs.mkdir(filesDir, { recursive: true }))
    const running = yield* Ref.make(HashMap.empty<string, Running>())
    const wake = yield* Queue.sliding<void>(1)
    const now = Effect.map(Clock.currentTimeMillis, (millis) => Math.floor(millis / 1000))
    const replica = settings.replicaId ?? (yield* Effect.promise(() => persistentReplicaId(jobsDir)))
    const heartbeatMs = settings.heartbeatMs ?? 5_000
    const staleAfterMs = settings.staleAfterMs ?? 30_000
    /** Whether this replica still trains the job: it holds the claim and nobody asked it to stop. */
    const claimHeld = (id: string) =>
      Effect.map(store.claimOf(id), Option.match({ onNone: () => false, onSome: (claim) => claim.status === "running" && claim.claimedBy === replica }))

    const getFile = (id: string) =>
      Effect.flatMap(store.getFile(id), Option.match({ onNone: () => Effect.fail(new FineTuningObjectNotFound({ kind: "file", id })), onSome: Effect.succeed }))

    const getJob = (id: string) =>
      Effect.flatMap(store.getJob(id), Option.match({ onNone: () => Effect.fail(new FineTuningObjectNotFound({ kind: "fine_tuning.job", id })), onSome: Effect.succeed }))

    /** Stores an uploaded dataset (moved from `source`) once the validator finds no problem in it. */
    const uploadFile = Effect.fn("FineTuningJobs.uploadFile")(function*(upload: { readonly filename: string; readonly source: string; readonly purpose: string }) {
      const extension = path.extname(upload.filename).toLowerCase()
      if (datasetFileType(upload.filename) === undefined) {
        return yield* new JobParamRejected({ param: "file", code: "invalid_file_format", reason: `${upload.filename}: a fine-tuning file is .jsonl, .json, .csv or .parquet` })
      }
      const id = newId("file")
      const target = path.join(filesDir, `${id}${extension}`)
      yield* Effect.promise(() => fs.copyFile(upload.source, target))
      const removeTarget = Effect.promise(() => fs.rm(target, { force: true }))
      const report = yield* validateDataset(target, { format: "auto" }).pipe(
        Effect.mapError((unreadable) => new DatasetRejected({ filename: upload.filename, problems: [unreadable.reason], total: 1 })),
        Effect.tapError(() => removeTarget)
      )
      if (!report.ok) {
        yield* removeTarget
        const problems = report.problems.map((problem) => `${formatLocation(problem.location)} ${problem.field}: ${problem.message}`)
        return yield* new DatasetRejected({ filename: upload.filename, problems: problems.slice(0, problemLimit), total: problems.length })
      }
      const content = yield* Effect.promise(() => fs.readFile(target))
      return yield* store.addFile({ id, filename: upload.filename, bytes: content.length, purpose: upload.purpose, path: target, records: report.valid }, content).pipe(
        Effect.tapError(() => removeTarget)
      )
    })

    /** A file's bytes: from the database, or for a file recorded before it kept them, from its path. */
    const fileContent = Effect.fn("FineTuningJobs.fileContent")(function*(id: string) {
      const file = yield* getFile(id)
      const stored = yield* store.fileContent(id)
      return Option.isSome(stored) ? stored.value : new Uint8Array(yield* Effect.promise(() => fs.readFile(file.path)))
    })

    /**
     * Where this replica reads a file: its copy under `<dataDir>/files`, written from the database first when the file
     * was uploaded to another replica of the cluster.
     */
    const localPath = (file: FileRecord) =>
      Effect.gen(function*() {
        const local = path.join(filesDir, path.basename(file.path))
        if (yield* Effect.promise(() => fs.access(local).then(() => true, () => false))) return local
        const stored = yield* store.fileContent(file.id)
        if (Option.isNone(stored)) return file.path
        // Written under a temporary name and renamed, so a concurrent reader never sees a partial copy.
        const partial = `${local}.${randomBytes(6).toString("hex")}.partial`
        yield* Effect.promise(() => fs.writeFile(partial, stored.value).then(() => fs.rename(partial, local)))
        return local
      })

    const deleteFile = Effect.fn("FineTuningJobs.deleteFile")(function*(id: string) {
      const file = yield* getFile(id)
      yield* store.removeFile(id)
      yield* Effect.promise(() => fs.rm(path.join(filesDir, path.basename(file.path)), { force: true }))
    })

    const trainingFileOf = (id: string, param: string) =>
      getFile(id).pipe(
        Effect.catchTag("FineTuningObjectNotFound", () => Effect.fail(new JobParamRejected({ param, code: "file_not_found", reason: `No file with id ${id}` }))),
        Effect.filterOrFail(
          (file) => file.purpose === "fine-tune",
          (file) => new JobParamRejected({ param, code: "invalid_file_purpose", reason: `File ${id} has purpose ${file.purpose}, not fine-tune` })
        )
      )

    /** The GGUF a job trains from: a served base model, or an earlier job's fine-tuned model. */
    const basePathOf = (model: string) =>
      Effect.gen(function*() {
        const configured = settings.baseModels[model]
        if (configured !== undefined) return configured
        const earlier = yield* store.jobServing(model)
        if (Option.isSome(earlier) && earlier.value.output_path !== null) return earlier.value.output_path
        const known = Object.keys(settings.baseModels)
        return yield* new JobParamRejected({
          param: "model",
          code: "model_not_available",
          reason: `Model ${model} is not available for fine-tuning; available: ${known.length === 0 ? "none" : known.join(", ")} (or a succeeded job's ft: model)`
        })
      })

    const createJob = Effect.fn("FineTuningJobs.createJob")(function*(request: JobRequest) {
      const basePath = yield* basePathOf(request.model)
      yield* requireF32(basePath).pipe(
        Effect.catchTags({
          ModelNotTrainable: (refused) => Effect.fail(new JobParamRejected({ param: "model", code: "model_not_trainable", reason: refused.message })),
          TrainingFailed: (unreadable) => Effect.fail(new JobParamRejected({ param: "model", code: "model_not_trainable", reason: unreadable.message }))
        })
      )
      yield* trainingFileOf(request.trainingFile, "training_file")
      if (request.validationFile !== undefined) yield* trainingFileOf(request.validationFile, "validation_file")
      const job = yield* store.addJob({
        id: newId("ftjob"),
        model: request.model,
        base_path: basePath,
        training_file: request.trainingFile,
        validation_file: request.validationFile ?? null,
        n_epochs: request.nEpochs,
        batch_size: request.batchSize,
        learning_rate_multiplier: request.learningRateMultiplier,
        suffix: request.suffix ?? null,
        seed: request.seed ?? Math.floor(Math.random() * 2 ** 31),
        metadata: request.metadata ?? null,
        priority: request.priority,
        status: "queued",
        fine_tuned_model: null,
        output_path: null,
        error: null,
        finished_at: null,
        trained_tokens: null,
        estimated_finish: null
      })
      yield* store.addEvent(job.id, { message: `Created fine-tuning job: ${job.id}` })
      yield* Queue.offer(wake, undefined)
      return job
    })

    const examplesOf = (file: FileRecord) =>
      Effect.flatMap(localPath(file), (local) => Effect.map(validateDataset(local, { format: "auto" }), (report) => report.examples))

    const onProgress = (job: JobRecord, started: number) => {
      let lastLoss = 0
      let lastAccuracy = 0
      return (event: TrainingProgress) => {
        switch (event._tag) {
          case "Step":
            lastLoss = event.loss
            lastAccuracy = event.accuracy
            return Effect.zipRight(
              store.addEvent(job.id, {
                type: "metrics",
                message: `Step ${event.step}/${event.totalSteps}: training loss=${event.loss.toFixed(4)}`,
                data: {
                  step: event.step,
                  total_steps: event.totalSteps,
                  epoch: event.epoch,
                  train_loss: event.loss,
                  train_mean_token_accuracy: event.accuracy,
                  learning_rate: event.learningRate,
                  tokens_per_second: event.tokensPerSecond,
                  eta_seconds: event.etaSeconds
                }
              }),
              Effect.flatMap(now, (at) => store.updateJob(job.id, { estimated_finish: Math.round(at + event.etaSeconds) }))
            ).pipe(Effect.orDie)
          case "Epoch":
            return store.addEvent(job.id, {
              message: `Epoch ${event.epoch} done: training loss=${event.trainLoss.toFixed(4)}` +
                (event.validationLoss === undefined ? "" : `, validation loss=${event.validationLoss.toFixed(4)}`),
              data: { epoch: event.epoch, train_loss: event.trainLoss, valid_loss: event.validationLoss ?? null }
            }).pipe(Effect.orDie)
          case "Checkpoint":
            return Effect.zipRight(
              store.addCheckpoint({
                id: newId("ftckpt"),
                job_id: job.id,
                step: event.step,
                path: event.path,
                metrics: { step: event.step, train_loss: lastLoss, train_mean_token_accuracy: lastAccuracy }
              }),
              store.addEvent(job.id, { message: `Checkpoint saved at step ${event.step}`, data: { step: event.step, started_at: started } })
            ).pipe(Effect.orDie)
        }
      }
    }

    /** A succeeded job's model, served under its `ft:` id. */
    const servedAs = (job: JobRecord, gguf: string) => settings.serveModel(fineTunedModelId(job), gguf)

    /**
     * The newest checkpoint that still verifies (its file is there and matches its SHA-256). A checkpoint the trainer
     * pruned, or one damaged on disk, is passed over with an event saying so, and the run resumes from an older one.
     */
    const latestSoundCheckpoint = (job: JobRecord) =>
      Effect.gen(function*() {
        for (const candidate of yield* store.checkpoints(job.id)) {
          const verified = yield* Effect.either(verifyCheckpoint(candidate.path))
          if (Either.isRight(verified)) return candidate
          yield* store.addEvent(job.id, { level: "warn", message: `Skipped the checkpoint at step ${candidate.step}: ${verified.left.message}` })
        }
        return undefined
      })

    /** One run of a job, from its latest checkpoint if it has one; writes the job's outcome, never on interruption. */
    const run = (job: JobRecord, pauseRequested: Ref.Ref<boolean>) =>
      Effect.gen(function*() {
        const latest = yield* latestSoundCheckpoint(job)
        yield* store.addEvent(job.id, {
          message: latest === undefined ? "Fine-tuning job started" : `Fine-tuning job resumed from the checkpoint at step ${latest.step}`,
          data: latest === undefined ? null : { resumed_from_step: latest.step }
        })
        const examples = yield* examplesOf(yield* getFile(job.training_file))
        const validation = job.validation_file === null ? undefined : yield* examplesOf(yield* getFile(job.validation_file))
        const dir = path.join(jobsDir, job.id)
        const result = yield* train({
          modelPath: job.base_path,
          examples,
          validation,
          epochs: job.n_epochs,
          batchSize: job.batch_size,
          learningRate: settings.baseLearningRate * job.learning_rate_multiplier,
          schedule: "cosine",
          weightDecay: 0,
          threads: settings.trainingThreads,
          out: path.join(dir, "model.gguf"),
          checkpointDir: path.join(dir, "checkpoints"),
          checkpointEvery: settings.checkpointEvery,
          minDelta: 0,
          resumeFrom: latest === undefined ? undefined : { checkpoint: latest.path, step: latest.step },
          // A pause asked here, or through the job's row by another replica (pause, cancel, or the claim taken over).
          stopRequested: Effect.gen(function*() {
            if (yield* Ref.get(pauseRequested)) return true
            const claim = yield* store.claimOf(job.id)
            return Option.isNone(claim) || claim.value.pauseRequested || claim.value.status !== "running" || claim.value.claimedBy !== replica
          }).pipe(Effect.catchAll((unreadable) => Effect.as(Effect.logWarning("fine-tuning: reading the job's row failed; training goes on", unreadable), false))),
          onProgress: onProgress(job, yield* now)
        })
        const model = fineTunedModelId(job)
        // Cancelled (or taken over) during the last step: the run's result is not the job's.
        if (!(yield* claimHeld(job.id))) return
        yield* registry.load(servedAs(job, result.out))
        // Events first, then the status: a live event stream that sees the final status has seen every event.
        yield* store.addEvent(job.id, { message: `New fine-tuned model created: ${model}`, data: { steps: result.steps, stopped_because: result.stoppedBecause } })
        yield* store.addEvent(job.id, { message: "The job has successfully completed" })
        yield* store.finishClaimed(job.id, replica, { status: "succeeded", fine_tuned_model: model, output_path: result.out, finished_at: yield* now, estimated_finish: null })
      }).pipe(
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause)
            ? Effect.interrupt
            : Effect.gen(function*() {
              const failure = Cause.squash(cause)
              if (failure instanceof TrainingStopped) {
                // Stopped because the job was cancelled or taken over elsewhere: whoever did that wrote its state.
                if (!(yield* claimHeld(job.id))) return
                yield* store.addEvent(job.id, { message: `Job paused at step ${failure.step}`, data: { step: failure.step } })
                yield* store.finishClaimed(job.id, replica, { status: "paused", estimated_finish: null })
                return
              }
              const message = failure instanceof Error ? failure.message : String(failure)
              yield* Effect.logError("fine-tuning job failed", cause).pipe(Effect.annotateLogs({ job: job.id }))
              yield* store.addEvent(job.id, { level: "error", message: `Job failed: ${message}` })
              yield* store.finishClaimed(job.id, replica, { status: "failed", error: { code: "training_failed", message, param: null }, finished_at: yield* now, estimated_finish: null })
            }).pipe(Effect.orDie)
        )
      )

    const start = (job: JobRecord) =>
      Effect.gen(function*() {
        const pauseRequested = yield* Ref.make(false)
        const registered = yield* Deferred.make<void>()
        const fiber = yield* Deferred.await(registered).pipe(
          // The claim is renewed while the run lasts; once it is lost (cancelled elsewhere, taken over), the run stops.
          Effect.zipRight(Effect.raceFirst(run(job, pauseRequested), keepClaim(job.id))),
          Effect.ensuring(Effect.zipRight(Ref.update(running, HashMap.remove(job.id)), Queue.offer(wake, undefined))),
          Effect.catchAllDefect((defect) => Effect.logError("fine-tuning job died", defect)),
          Effect.forkIn(scope)
        )
        yield* Ref.update(running, HashMap.set(job.id, { fiber, pauseRequested }))
        yield* Deferred.succeed(registered, undefined)
      })

    /** Renews the claim every `heartbeatMs`; returns once the claim is lost. */
    const keepClaim = (id: string) =>
      Effect.sleep(heartbeatMs).pipe(
        Effect.zipRight(Effect.flatMap(Clock.currentTimeMillis, (at) => store.heartbeat(id, replica, at))),
        Effect.catchAll((unwritten) => Effect.as(Effect.logWarning("fine-tuning: renewing a job's claim failed; trying again", unwritten), true)),
        Effect.repeat({ while: (held) => held }),
        Effect.zipRight(Effect.logInfo("fine-tuning: the job's claim is gone (cancelled, or taken over); its run stops").pipe(Effect.annotateLogs({ job: id })))
      )

    /** Queues again the running jobs whose replica stopped renewing their claim before `staleBefore` (and `restarted`'s). */
    const requeueAbandoned = (restarted: string | null, message: string, staleBefore?: number) =>
      Effect.gen(function*() {
        const ids = yield* store.requeueAbandoned(staleBefore ?? (yield* Clock.currentTimeMillis) - staleAfterMs, restarted)
        yield* Effect.forEach(ids, (id) => store.addEvent(id, { message }), { discard: true })
      })

    /** Claims and starts queued jobs, by priority then age, while fewer than `concurrency` run here. */
    const dispatch = Effect.gen(function*() {
      yield* requeueAbandoned(null, "The replica training the job stopped renewing its claim: the job is queued to continue from its latest checkpoint")
      const active = yield* Ref.get(running)
      let free = settings.concurrency - HashMap.size(active)
      for (const job of yield* store.jobsIn(["queued"])) {
        if (free <= 0) return
        if (HashMap.has(active, job.id)) continue
        if (yield* store.claim(job.id, replica, yield* Clock.currentTimeMillis)) {
          yield* start({ ...job, status: "running" })
          free -= 1
        }
      }
    })

    /** Stops a running job's fiber (its step in flight finishes first); false when it was not running. */
    const stopRun = (id: string, pause: boolean) =>
      Effect.gen(function*() {
        const current = HashMap.get(yield* Ref.get(running), id)
        if (Option.isNone(current)) return false
        if (pause) {
          yield* Ref.set(current.value.pauseRequested, true)
          yield* Fiber.await(current.value.fiber)
        } else {
          yield* Fiber.interrupt(current.value.fiber)
        }
        return true
      })

    /** The job refused `action` in the state it is in now (it changed since it was read, e.g. on another replica). */
    const conflictNow = (id: string, action: "cancel" | "pause" | "resume") =>
      Effect.flatMap(getJob(id), (job) => Effect.fail(new JobStateConflict({ jobId: id, status: job.status, action })))

    const unfinished: ReadonlyArray<JobStatus> = ["validating_files", "queued", "running", "paused"]

    // A job training on another replica is cancelled by its row: that replica reads it at its next step boundary (or
    // heartbeat) and drops the run without writing an outcome.
    const cancel = Effect.fn("FineTuningJobs.cancel")(function*(id: string) {
      const job = yield* getJob(id)
      if (isFinished(job.status)) return yield* new JobStateConflict({ jobId: id, status: job.status, action: "cancel" })
      yield* stopRun(id, false)
      yield* store.addEvent(id, { message: "Job cancelled" })
      if (!(yield* store.transition(id, unfinished, { status: "cancelled", finished_at: yield* now, estimated_finish: null }))) return yield* conflictNow(id, "cancel")
      return yield* getJob(id)
    })

    /** Waits (up to `staleAfterMs`) for another replica to stop a job it was asked to pause. */
    const awaitStopped = (id: string) =>
      getJob(id).pipe(
        Effect.repeat({ schedule: Schedule.spaced("100 millis"), while: (job) => job.status === "running" }),
        Effect.timeoutOption(staleAfterMs),
        Effect.zipRight(getJob(id))
      )

    const pause = Effect.fn("FineTuningJobs.pause")(function*(id: string) {
      const job = yield* getJob(id)
      if (job.status !== "running" && job.status !== "queued") return yield* new JobStateConflict({ jobId: id, status: job.status, action: "pause" })
      // A running job stops at its next step boundary and writes `paused` itself; a queued one is paused here.
      if (yield* stopRun(id, true)) return yield* getJob(id)
      if (yield* store.transition(id, ["queued"], { status: "paused" })) {
        yield* store.addEvent(id, { message: "Job paused" })
        return yield* getJob(id)
      }
      if (yield* store.requestPause(id)) return yield* awaitStopped(id)
      return yield* conflictNow(id, "pause")
    })

    /** Queues a paused (or cancelled, or failed) job again; it continues from its latest checkpoint. */
    const resume = Effect.fn("FineTuningJobs.resume")(function*(id: string) {
      const job = yield* getJob(id)
      const resumable: ReadonlyArray<JobStatus> = ["paused", "cancelled", "failed"]
      if (!resumable.includes(job.status)) return yield* new JobStateConflict({ jobId: id, status: job.status, action: "resume" })
      if (!(yield* store.transition(id, resumable, { status: "queued", finished_at: null, error: null }))) return yield* conflictNow(id, "resume")
      yield* store.addEvent(id, { message: "Job resumed: queued to continue from its latest checkpoint" })
      yield* Queue.offer(wake, undefined)
      return yield* getJob(id)
    })

    // On start: jobs this replica was training when it stopped, and jobs whose replica stopped renewing their claim,
    // continue from their checkpoints (not the jobs other live replicas train); the models of succeeded jobs are served again.
    // (Here only this replica's own, and unclaimed ones from before claims; the first dispatch takes the stale ones.)
    yield* requeueAbandoned(replica, "The server restarted: the job is queued to continue from its latest checkpoint", 0).pipe(Effect.orDie)
    for (const job of yield* store.jobsIn(["succeeded"]).pipe(Effect.orDie)) {
      if (job.output_path !== null) yield* registry.register(servedAs(job, job.output_path))
    }
    // Woken by this replica's own changes, and every `heartbeatMs` for jobs queued or abandoned on other replicas.
    yield* Effect.race(Queue.take(wake), Effect.sleep(heartbeatMs)).pipe(
      Effect.zipRight(dispatch),
      Effect.catchAllCause((cause) => Effect.logError("fine-tuning dispatch failed", cause)),
      Effect.forever,
      Effect.forkScoped
    )
    yield* Queue.offer(wake, undefined)
    // The runs end with the service (a process shutdown): their jobs stay `running` in the store and resume on start.
    yield* Effect.addFinalizer(() =>
      Effect.flatMap(Ref.get(running), (active) => Fiber.interruptAll(Array.from(HashMap.values(active), (entry) => entry.fiber)))
    )

    return {
      settings,
      uploadFile,
      getFile,
      fileContent,
      listFiles: store.listFiles,
      deleteFile,
      createJob,
      getJob,
      listJobs: store.listJobs,
      listEvents: (id: string, after: string | undefined, limit: number) => Effect.zipRight(getJob(id), store.listEvents(id, after, limit)),
      eventsSince: store.eventsSince,
      checkpoints: (id: string) => Effect.zipRight(getJob(id), store.checkpoints(id)),
      cancel,
      pause,
      resume
    } as const
  })
}) {
  /** Fine-tuning on `settings.database` (default `<dataDir>/fine_tuning.sqlite`), serving its models through the `ModelRegistry`. */
  static readonly layer = (settings: FineTuningSettings): Layer.Layer<FineTuningJobs, never, ModelRegistry> =>
    Layer.unwrapEffect(
      // The database's folder must exist before SQLite opens the file in it.
      Effect.as(
        Effect.promise(() => fs.mkdir(settings.dataDir, { recursive: true })),
        FineTuningJobs.Default.pipe(
          Layer.provide(Layer.orDie(FineTuningStore.layer(settings.database ?? path.join(settings.dataDir, "fine_tuning.sqlite")))),
          Layer.provide(Layer.succeed(FineTuningConfig, settings))
        )
      )
    )
}

