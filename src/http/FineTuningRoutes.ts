import { HttpRouter, HttpServerRequest, HttpServerResponse, Multipart } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { Duration, Effect, Option, Ref, Schema, Stream } from "effect"
import { FineTuningDisabled } from "../training/jobs/FineTuningErrors.js"
import { fineTunedModelId, FineTuningJobs } from "../training/jobs/FineTuningJobs.js"
import type { JobRequest } from "../training/jobs/FineTuningJobs.js"
import { isFinished } from "../training/jobs/FineTuningStore.js"
import type { CheckpointRecord, FileRecord, JobEvent, JobRecord } from "../training/jobs/FineTuningStore.js"
import { BodyTooLarge, InvalidParam } from "./HttpErrors.js"
import { readJsonBody } from "./JsonBody.js"
import { decodeBody } from "./OpenAiMapping.js"

const noStore = { "cache-control": "no-store" }

/** The fine-tuning service, or 404 on a server composed without it. */
const service = Effect.flatMap(Effect.serviceOption(FineTuningJobs), Option.match({ onNone: () => Effect.fail(new FineTuningDisabled()), onSome: Effect.succeed }))

const idParam = Effect.map(HttpRouter.params, (params) => params["id"] ?? "")

const fileJson = (file: FileRecord) => ({
  id: file.id,
  object: "file",
  bytes: file.bytes,
  created_at: file.created_at,
  filename: file.filename,
  purpose: file.purpose,
  status: "processed",
  status_details: null
})

const hyperparametersOf = (job: JobRecord) => ({ n_epochs: job.n_epochs, batch_size: job.batch_size, learning_rate_multiplier: job.learning_rate_multiplier })

const jobJson = (job: JobRecord) => ({
  id: job.id,
  object: "fine_tuning.job",
  created_at: job.created_at,
  error: job.error,
  fine_tuned_model: job.fine_tuned_model,
  finished_at: job.finished_at,
  hyperparameters: hyperparametersOf(job),
  model: job.model,
  organization_id: "weft",
  result_files: [],
  seed: job.seed,
  status: job.status,
  trained_tokens: job.trained_tokens,
  training_file: job.training_file,
  validation_file: job.validation_file,
  estimated_finish: job.estimated_finish,
  integrations: null,
  metadata: job.metadata,
  method: { type: "supervised", supervised: { hyperparameters: hyperparametersOf(job) } },
  // Weft's extension: where the job sits in the queue (higher first).
  priority: job.priority
})

const eventJson = (event: JobEvent) => ({
  id: event.id,
  object: "fine_tuning.job.event",
  created_at: event.created_at,
  level: event.level,
  message: event.message,
  type: event.type,
  data: event.data
})

const checkpointJson = (job: JobRecord) => (checkpoint: CheckpointRecord) => ({
  id: checkpoint.id,
  object: "fine_tuning.job.checkpoint",
  created_at: checkpoint.created_at,
  fine_tuned_model_checkpoint: `${fineTunedModelId(job)}:ckpt-step-${checkpoint.step}`,
  fine_tuning_job_id: checkpoint.job_id,
  metrics: checkpoint.metrics,
  step_number: checkpoint.step
})

const list = <A>(data: ReadonlyArray<A>, hasMore: boolean) => HttpServerResponse.unsafeJson({ object: "list", data, has_more: hasMore }, { headers: noStore })

/** `after` and `limit` (1 to 100, default 20) of a cursor-paginated list. */
const pageParams = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const query = new URL(request.url, "http://localhost").searchParams
  const rawLimit = query.get("limit")
  const limit = rawLimit === null ? 20 : Number(rawLimit)
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
    return yield* new InvalidParam({ param: "limit", message: "limit must be an integer from 1 to 100", code: "invalid_value" })
  }
  return { after: query.get("after") ?? undefined, limit, stream: query.get("stream") === "true" }
})

// ---- files

/** `POST /v1/files`: multipart `file` and `purpose: "fine-tune"`; the dataset is validated before it is kept. */
const uploadFile = Effect.gen(function*() {
  const jobs = yield* service
  const limit = jobs.settings.maxUploadBytes
  const request = yield* HttpServerRequest.HttpServerRequest
  const declared = Number(request.headers["content-length"])
  // The multipart envelope adds a little to the file: the declared length is checked with that slack.
  if (Number.isFinite(declared) && declared > limit + 64 * 1024) return yield* new BodyTooLarge({ limitBytes: limit, declaredBytes: declared })
  const form = yield* request.multipart.pipe(
    Multipart.withMaxFileSize(Option.some(limit)),
    Effect.mapError((error) =>
      error.reason === "FileTooLarge" || error.reason === "BodyTooLarge"
        ? new BodyTooLarge({ limitBytes: limit })
        : new InvalidParam({ param: null, message: `The body must be multipart/form-data with a file and a purpose (${error.reason})`, code: "invalid_multipart" })
    )
  )
  const purpose = form["purpose"]
  if (purpose !== "fine-tune") {
    return yield* new InvalidParam({ param: "purpose", message: "purpose must be \"fine-tune\": this server stores files for fine-tuning only", code: "invalid_value" })
  }
  const file = form["file"]
  const upload = Array.isArray(file) && file.length === 1 && Multipart.isPersistedFile(file[0]) ? file[0] : undefined
  if (upload === undefined) return yield* new InvalidParam({ param: "file", message: "Missing required parameter: 'file' (one uploaded file)", code: "missing_required_parameter" })
  const stored = yield* jobs.uploadFile({ filename: upload.name, source: upload.path, purpose })
  return HttpServerResponse.unsafeJson(fileJson(stored), { headers: noStore })
}).pipe(Effect.scoped, Effect.provide(NodeContext.layer))

const fileRoutes = HttpRouter.empty.pipe(
  HttpRouter.post("/v1/files", uploadFile),
  HttpRouter.get("/v1/files", Effect.map(Effect.flatMap(service, (jobs) => jobs.listFiles), (files) => list(files.map(fileJson), false))),
  HttpRouter.get("/v1/files/:id", Effect.gen(function*() {
    return HttpServerResponse.unsafeJson(fileJson(yield* (yield* service).getFile(yield* idParam)), { headers: noStore })
  })),
  HttpRouter.del("/v1/files/:id", Effect.gen(function*() {
    const id = yield* idParam
    yield* (yield* service).deleteFile(id)
    return HttpServerResponse.unsafeJson({ id, object: "file", deleted: true }, { headers: noStore })
  })),
  HttpRouter.get("/v1/files/:id/content", Effect.gen(function*() {
    const bytes = yield* (yield* service).fileContent(yield* idParam)
    return HttpServerResponse.uint8Array(bytes, { contentType: "application/octet-stream", headers: noStore })
  }))
)

// ---- jobs

const Auto = Schema.Literal("auto")
const Hyperparameters = Schema.Struct({
  n_epochs: Schema.optional(Schema.Union(Auto, Schema.Int.pipe(Schema.between(1, 50)))),
  batch_size: Schema.optional(Schema.Union(Auto, Schema.Int.pipe(Schema.between(1, 256)))),
  learning_rate_multiplier: Schema.optional(Schema.Union(Auto, Schema.Number.pipe(Schema.greaterThan(0), Schema.lessThanOrEqualTo(100))))
})

const JobBody = Schema.Struct({
  model: Schema.NonEmptyString,
  training_file: Schema.NonEmptyString,
  validation_file: Schema.optional(Schema.NullOr(Schema.NonEmptyString)),
  hyperparameters: Schema.optional(Hyperparameters),
  method: Schema.optional(Schema.Struct({
    type: Schema.Literal("supervised"),
    supervised: Schema.optional(Schema.Struct({ hyperparameters: Schema.optional(Hyperparameters) }))
  })),
  suffix: Schema.optional(Schema.NullOr(Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9._-]{1,64}$/)))),
  seed: Schema.optional(Schema.NullOr(Schema.Int.pipe(Schema.between(0, 2 ** 31 - 1)))),
  metadata: Schema.optional(Schema.NullOr(Schema.Record({ key: Schema.String.pipe(Schema.maxLength(64)), value: Schema.String.pipe(Schema.maxLength(512)) })))
})

/** Keys the job body may have at each level; anything else is refused by name, never ignored. */
const knownKeys: ReadonlyArray<readonly [string, ReadonlyArray<string>]> = [
  ["", ["model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed", "metadata", "integrations"]],
  ["hyperparameters", ["n_epochs", "batch_size", "learning_rate_multiplier"]],
  ["method", ["type", "supervised"]],
  ["method.supervised", ["hyperparameters"]],
  ["method.supervised.hyperparameters", ["n_epochs", "batch_size", "learning_rate_multiplier"]]
]

const at = (body: unknown, dotted: string): unknown =>
  dotted === "" ? body : dotted.split(".").reduce<unknown>((value, key) => (typeof value === "object" && value !== null ? (value as Record<string, unknown>)[key] : undefined), body)

const unknownParams = (body: unknown): Array<string> =>
  knownKeys.flatMap(([where, keys]) => {
    const value = at(body, where)
    if (typeof value !== "object" || value === null || Array.isArray(value)) return []
    return Object.keys(value).filter((key) => !keys.includes(key)).map((key) => (where === "" ? key : `${where}.${key}`))
  })

const defaultEpochs = 3

/** The body of `POST /v1/fine_tuning/jobs`, decoded; unknown or unsupported parameters are a 400 naming them. */
const jobRequest = (body: unknown) =>
  Effect.gen(function*() {
    const unknown = unknownParams(body)
    if (unknown.length > 0) {
      return yield* new InvalidParam({ param: unknown[0]!, message: `Unknown parameter${unknown.length > 1 ? "s" : ""}: ${unknown.map((name) => `'${name}'`).join(", ")}`, code: "unknown_parameter" })
    }
    const integrations = at(body, "integrations")
    if (integrations !== undefined && integrations !== null && !(Array.isArray(integrations) && integrations.length === 0)) {
      return yield* new InvalidParam({ param: "integrations", message: "integrations are not supported by this server", code: "unsupported_parameter" })
    }
    const decoded = yield* decodeBody(JobBody, body)
    const fromMethod = decoded.method?.supervised?.hyperparameters
    if (decoded.hyperparameters !== undefined && fromMethod !== undefined) {
      return yield* new InvalidParam({ param: "hyperparameters", message: "Give hyperparameters either at the top level or under method.supervised, not both", code: "invalid_value" })
    }
    const hyperparameters = fromMethod ?? decoded.hyperparameters ?? {}
    const rawPriority = decoded.metadata?.["priority"]
    const priority = rawPriority === undefined ? 0 : Number(rawPriority)
    if (!Number.isInteger(priority) || Math.abs(priority) > 1000) {
      return yield* new InvalidParam({ param: "metadata.priority", message: "metadata.priority must be an integer from -1000 to 1000 (higher trains first)", code: "invalid_value" })
    }
    const orDefault = <A>(value: A | "auto" | undefined, fallback: A): A => (value === undefined || value === "auto" ? fallback : value)
    return {
      model: decoded.model,
      trainingFile: decoded.training_file,
      validationFile: decoded.validation_file ?? undefined,
      nEpochs: orDefault(hyperparameters.n_epochs, defaultEpochs),
      batchSize: orDefault(hyperparameters.batch_size, 1),
      learningRateMultiplier: orDefault(hyperparameters.learning_rate_multiplier, 1),
      suffix: decoded.suffix ?? undefined,
      seed: decoded.seed ?? undefined,
      metadata: decoded.metadata ?? undefined,
      priority
    } satisfies JobRequest
  })

const sseHeaders = { contentType: "text/event-stream", headers: { ...noStore, "x-accel-buffering": "no" } }

const pollEvery = Duration.millis(500)

/** A job's events as they happen (SSE), from the first; it ends with `[DONE]` once the job stops (or pauses). */
const liveEvents = (jobs: FineTuningJobs, id: string) =>
  Effect.gen(function*() {
    const lastSeq = yield* Ref.make(0)
    const done = yield* Ref.make(false)
    // The status is read before the events: a job's last events are written before its final status.
    const poll = Effect.gen(function*() {
      if (yield* Ref.get(done)) return Option.none<string>()
      const job = yield* jobs.getJob(id)
      const events = yield* jobs.eventsSince(id, yield* Ref.get(lastSeq))
      if (events.length > 0) yield* Ref.set(lastSeq, events.at(-1)!.seq)
      const frames = events.map((event) => `data: ${JSON.stringify(eventJson(event))}\n\n`).join("")
      if (isFinished(job.status) || job.status === "paused") {
        yield* Ref.set(done, true)
        return Option.some(`${frames}data: [DONE]\n\n`)
      }
      if (frames === "") yield* Effect.sleep(pollEvery)
      return Option.some(frames)
    })
    const frames = Stream.repeatEffectOption(Effect.flatMap(poll.pipe(Effect.mapError(Option.some)), Option.match({ onNone: () => Effect.fail(Option.none()), onSome: Effect.succeed }))).pipe(
      Stream.filter((text) => text !== ""),
      Stream.catchAll((failure) => Stream.make(`data: ${JSON.stringify({ error: { message: failure.message, type: "server_error", param: null, code: null } })}\n\n`)),
      Stream.encodeText
    )
    return HttpServerResponse.stream(frames, sseHeaders)
  })

const jobAction = (action: "cancel" | "pause" | "resume") =>
  Effect.gen(function*() {
    const jobs = yield* service
    const job = yield* jobs[action](yield* idParam)
    return HttpServerResponse.unsafeJson(jobJson(job), { headers: noStore })
  })

const jobRoutes = (maxBodyBytes: number) =>
  HttpRouter.empty.pipe(
    HttpRouter.post("/v1/fine_tuning/jobs", Effect.gen(function*() {
      const jobs = yield* service
      const request = yield* jobRequest(yield* readJsonBody(maxBodyBytes))
      return HttpServerResponse.unsafeJson(jobJson(yield* jobs.createJob(request)), { headers: noStore })
    })),
    HttpRouter.get("/v1/fine_tuning/jobs", Effect.gen(function*() {
      const { after, limit } = yield* pageParams
      const page = yield* (yield* service).listJobs(after, limit)
      return list(page.data.map(jobJson), page.hasMore)
    })),
    HttpRouter.get("/v1/fine_tuning/jobs/:id", Effect.gen(function*() {
      return HttpServerResponse.unsafeJson(jobJson(yield* (yield* service).getJob(yield* idParam)), { headers: noStore })
    })),
    HttpRouter.get("/v1/fine_tuning/jobs/:id/events", Effect.gen(function*() {
      const jobs = yield* service
      const id = yield* idParam
      const { after, limit, stream } = yield* pageParams
      if (stream) return yield* Effect.zipRight(jobs.getJob(id), liveEvents(jobs, id))
      const page = yield* jobs.listEvents(id, after, limit)
      return list(page.data.map(eventJson), page.hasMore)
    })),
    HttpRouter.get("/v1/fine_tuning/jobs/:id/checkpoints", Effect.gen(function*() {
      const jobs = yield* service
      const id = yield* idParam
      const { after, limit } = yield* pageParams
      const job = yield* jobs.getJob(id)
      const all = yield* jobs.checkpoints(id)
      const start = after === undefined ? 0 : all.findIndex((checkpoint) => checkpoint.id === after) + 1
      const page = all.slice(start, start + limit)
      return HttpServerResponse.unsafeJson(
        { object: "list", data: page.map(checkpointJson(job)), has_more: start + limit < all.length, first_id: page[0]?.id ?? null, last_id: page.at(-1)?.id ?? null },
        { headers: noStore }
      )
    })),
    HttpRouter.post("/v1/fine_tuning/jobs/:id/cancel", jobAction("cancel")),
    HttpRouter.post("/v1/fine_tuning/jobs/:id/pause", jobAction("pause")),
    HttpRouter.post("/v1/fine_tuning/jobs/:id/resume", jobAction("resume"))
  )

/** OpenAI's files (`/v1/files`, fine-tune purpose) and fine-tuning jobs (`/v1/fine_tuning/jobs/…`) APIs. */
export const fineTuningRoutes = (options: { readonly maxBodyBytes: number }) => HttpRouter.concat(fileRoutes, jobRoutes(options.maxBodyBytes))
