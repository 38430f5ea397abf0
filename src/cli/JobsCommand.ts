import { Args, Command, Options } from "@effect/cli"
import { FetchHttpClient, HttpClient, HttpClientRequest } from "@effect/platform"
import { Config, Console, Effect, Option, Schema } from "effect"
import type { Redacted } from "effect"

/** The server refused the request or could not be reached. */
export class JobsRequestFailed extends Schema.TaggedError<JobsRequestFailed>()("JobsRequestFailed", {
  url: Schema.String,
  status: Schema.optional(Schema.Number),
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.url}: ${this.status === undefined ? "" : `${this.status} `}${this.reason}`
  }
}

const url = Options.text("url").pipe(
  Options.withDefault("http://127.0.0.1:8080"),
  Options.withDescription("The running Weft server (jobs run inside it, so cancelling goes through it)")
)
const apiKey = Options.redacted("api-key").pipe(
  Options.withFallbackConfig(Config.redacted("WEFT_API_KEY")),
  Options.optional,
  Options.withDescription("API key, when the server has keys (default $WEFT_API_KEY)")
)
const jobId = Args.text({ name: "JOB_ID" })
const json = Options.boolean("json").pipe(Options.withDescription("Print the server's JSON"))

interface Job {
  readonly id: string
  readonly status: string
  readonly model: string
  readonly created_at: number
  readonly fine_tuned_model: string | null
  readonly estimated_finish: number | null
  readonly priority?: number
  readonly error: { readonly message: string } | null
}

interface Event {
  readonly created_at: number
  readonly message: string
}

/** Sends one request to `<url>/v1/fine_tuning/...` and returns its JSON body; a 4xx/5xx fails with the server's message. */
const call = (base: string, key: Option.Option<Redacted.Redacted>, method: "GET" | "POST", route: string) =>
  Effect.gen(function*() {
    const target = `${base.replace(/\/+$/, "")}${route}`
    const failed = (reason: string, status?: number) => new JobsRequestFailed({ url: target, status, reason })
    const client = yield* HttpClient.HttpClient
    const request = HttpClientRequest.make(method)(target).pipe(
      Option.isSome(key) ? HttpClientRequest.bearerToken(key.value) : (same) => same
    )
    const response = yield* client.execute(request).pipe(Effect.mapError((error) => failed(error.message)))
    const body = (yield* response.json.pipe(Effect.mapError((error) => failed(error.message, response.status)))) as { error?: { message: string } }
    if (response.status >= 400) return yield* failed(body.error?.message ?? "request failed", response.status)
    return body
  }).pipe(Effect.scoped, Effect.provide(FetchHttpClient.layer))

const time = (seconds: number | null) => (seconds === null ? "-" : new Date(seconds * 1000).toISOString().replace(".000Z", "Z"))

const jobLine = (job: Job) =>
  [job.id, job.status.padEnd(9), job.model, job.fine_tuned_model ?? "-", `created ${time(job.created_at)}`, job.status === "running" ? `ETA ${time(job.estimated_finish)}` : ""]
    .filter((part) => part !== "").join("  ")

const listCommand = Command.make("list", { url, apiKey, json, limit: Options.integer("limit").pipe(Options.withDefault(20)) }, (options) =>
  Effect.gen(function*() {
    const page = (yield* call(options.url, options.apiKey, "GET", `/v1/fine_tuning/jobs?limit=${options.limit}`)) as { data: ReadonlyArray<Job>; has_more: boolean }
    if (options.json) return yield* Console.log(JSON.stringify(page, null, 2))
    if (page.data.length === 0) return yield* Console.log("no fine-tuning jobs")
    yield* Effect.forEach(page.data, (job) => Console.log(jobLine(job)))
    if (page.has_more) yield* Console.log(`(more: --limit ${options.limit * 2})`)
  })).pipe(Command.withDescription("List fine-tuning jobs, newest first"))

const showCommand = Command.make("show", { url, apiKey, json, jobId }, (options) =>
  Effect.gen(function*() {
    const job = (yield* call(options.url, options.apiKey, "GET", `/v1/fine_tuning/jobs/${encodeURIComponent(options.jobId)}`)) as Job
    const events = (yield* call(options.url, options.apiKey, "GET", `/v1/fine_tuning/jobs/${encodeURIComponent(options.jobId)}/events?limit=10`)) as { data: ReadonlyArray<Event> }
    if (options.json) return yield* Console.log(JSON.stringify({ job, events: events.data }, null, 2))
    yield* Console.log(jobLine(job))
    if (job.error !== null) yield* Console.log(`  error: ${job.error.message}`)
    yield* Effect.forEach([...events.data].reverse(), (event) => Console.log(`  ${time(event.created_at)}  ${event.message}`))
  })).pipe(Command.withDescription("A job and its latest events"))

const cancelCommand = Command.make("cancel", { url, apiKey, jobId }, (options) =>
  Effect.gen(function*() {
    const job = (yield* call(options.url, options.apiKey, "POST", `/v1/fine_tuning/jobs/${encodeURIComponent(options.jobId)}/cancel`)) as Job
    yield* Console.log(jobLine(job))
  })).pipe(Command.withDescription("Cancel a queued or running job (its checkpoints are kept)"))

/** `weft jobs list|show|cancel`: fine-tuning jobs of a running server, through its API. */
export const jobsCommand = Command.make("jobs").pipe(
  Command.withDescription("Fine-tuning jobs of a running Weft server (--url)"),
  Command.withSubcommands([listCommand, showCommand, cancelCommand])
)
