import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import OpenAI, { toFile } from "openai"
import type { FineTuningJob, FineTuningJobEvent } from "openai/resources/fine-tuning/jobs/jobs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { llamaBackendLayer } from "../../src/host/LocalEngine.js"
import type { FineTuningInput } from "../../src/layers.js"
import { generateModel } from "../../src/model/generateModel.js"
import { postJson, sseData, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { runWeftInProcess } from "../support/weftCli.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-ft-jobs-"))
const baseId = "tiny-f32"
let modelPath = ""

const question = (subject: string) => `Q: where is the ${subject}?\nA:`
/** A learnable pattern as JSONL: whatever the subject, the answer is the same. */
const patternJsonl = (count: number) =>
  Array.from({ length: count }, (_, at) => JSON.stringify({ prompt: question(`thing ${at}`), completion: " in the garden\n" })).join("\n")

/** Training on 1 thread (2 spin in ggml's barrier on a shared 2-core machine), a checkpoint after every step (so a stop loses nothing), lr 1e-2 as the trainer's own test. */
const fineTuning = (dataDir: string): FineTuningInput => ({
  dataDir,
  concurrency: 1,
  trainingThreads: 1,
  maxUploadBytes: 64 * 1024,
  checkpointEvery: 1,
  baseLearningRate: 1e-2,
  baseModels: { [baseId]: modelPath }
})

const start = (dataDir: string) =>
  startServer(llamaBackendLayer({ modelPath, modelId: baseId, parallel: 2, contextSize: 256, threads: 1, gpu: false }), { fineTuning: fineTuning(dataDir) })

const clientOf = (server: TestServer) => new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0, timeout: 600_000 })

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls until `check` returns a value; fails the test after `seconds`. */
const until = async <A>(what: string, check: () => Promise<A | undefined>, seconds = 540): Promise<A> => {
  for (let waited = 0; waited < seconds * 4; waited++) {
    const value = await check()
    if (value !== undefined) return value
    await sleep(250)
  }
  throw new Error(`timed out waiting for ${what}`)
}

const allEvents = async (client: OpenAI, id: string): Promise<Array<FineTuningJobEvent>> => {
  const events: Array<FineTuningJobEvent> = []
  for await (const event of client.fineTuning.jobs.listEvents(id, { limit: 7 })) events.push(event)
  // Pages come newest first: oldest first reads as the job's log.
  return events.reverse()
}

const stepOf = (event: FineTuningJobEvent) => (event.data as { step: number }).step
const lossOf = (event: FineTuningJobEvent) => (event.data as { train_loss: number }).train_loss

/** The step the job resumed from each time it resumed, and the first step it ran after each. */
const resumptions = (events: ReadonlyArray<FineTuningJobEvent>) =>
  events.flatMap((event, at) => {
    const from = (event.data as { resumed_from_step?: number } | null)?.resumed_from_step
    if (from === undefined) return []
    const next = events.slice(at + 1).find((later) => later.type === "metrics")
    return [{ from, firstStep: next === undefined ? undefined : stepOf(next) }]
  })

const latestCheckpointStep = async (client: OpenAI, id: string) => {
  const page = await client.fineTuning.jobs.checkpoints.list(id)
  return page.data[0]?.step_number ?? 0
}

const completion = async (server: TestServer, model: string, prompt: string) => {
  const response = await clientOf(server).completions.create({ model, prompt, max_tokens: 6, temperature: 0 })
  return response.choices[0]!.text
}

beforeAll(async () => {
  modelPath = await Effect.runPromise(generateModel({ preset: "tiny", weights: "f32", contextLength: 256, out: path.join(dir, "tiny-f32.gguf") })).then((model) => model.path)
}, 120_000)

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

describe("fine-tuning API", () => {
  const dataDir = path.join(dir, "bad-input")
  let server: TestServer
  beforeAll(async () => {
    server = await start(dataDir)
  }, 120_000)
  afterAll(() => server?.close())

  it("refuses a broken upload naming its line and field, a wrong purpose, and an oversized file (413)", async () => {
    const client = clientOf(server)
    const broken = [JSON.stringify({ prompt: "a", completion: "b" }), "{not json", JSON.stringify({ prompt: "a", completion: 3 })].join("\n")
    const refused = await client.files.create({ file: await toFile(Buffer.from(broken), "broken.jsonl"), purpose: "fine-tune" }).catch((error: unknown) => error)
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError)
    const error = refused as InstanceType<typeof OpenAI.BadRequestError>
    expect(error.code).toBe("invalid_file")
    expect(error.param).toBe("file")
    expect(error.message).toContain("line 2 (record)")
    expect(error.message).toContain("line 3 completion")

    const wrongPurpose = await client.files.create({ file: await toFile(Buffer.from(patternJsonl(2)), "ok.jsonl"), purpose: "batch" }).catch((caught: unknown) => caught)
    expect((wrongPurpose as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("purpose")

    const large = await client.files.create({ file: await toFile(Buffer.from(patternJsonl(3000)), "large.jsonl"), purpose: "fine-tune" }).catch((caught: unknown) => caught)
    expect((large as InstanceType<typeof OpenAI.APIError>).status).toBe(413)

    // Nothing was kept, and the server still serves.
    expect((await client.files.list()).data).toEqual([])
    expect((await client.models.list()).data.map((model) => model.id)).toContain(baseId)
  }, 120_000)

  it("refuses unknown and unsupported job parameters by name, unknown models and files, and answers 404 for unknown jobs", async () => {
    const client = clientOf(server)
    const file = await client.files.create({ file: await toFile(Buffer.from(patternJsonl(4)), "four.jsonl"), purpose: "fine-tune" })
    expect(file).toMatchObject({ object: "file", purpose: "fine-tune", filename: "four.jsonl", status: "processed" })
    expect((await client.files.retrieve(file.id)).bytes).toBe(Buffer.byteLength(patternJsonl(4)))
    expect(await (await client.files.content(file.id)).text()).toBe(patternJsonl(4))

    const refusal = async (body: unknown) => {
      const response = await postJson(server, "/v1/fine_tuning/jobs", body)
      return { status: response.status, error: ((await response.json()) as { error: { param: string | null; code: string | null; message: string } }).error }
    }
    const unknown = await refusal({ model: baseId, training_file: file.id, learning_rate: 1, hyperparameters: { n_epochs: 1, beta: 2 } })
    expect(unknown.status).toBe(400)
    expect(unknown.error.code).toBe("unknown_parameter")
    expect(unknown.error.message).toContain("'learning_rate'")
    expect(unknown.error.message).toContain("'hyperparameters.beta'")
    expect((await refusal({ model: baseId, training_file: file.id, method: { type: "dpo" } })).error.param).toBe("method.type")
    expect((await refusal({ model: baseId, training_file: file.id, integrations: [{ type: "wandb" }] })).error.param).toBe("integrations")
    expect((await refusal({ model: baseId, training_file: file.id, hyperparameters: { n_epochs: 0 } })).error.param).toBe("hyperparameters.n_epochs")
    expect((await refusal({ model: "nope", training_file: file.id })).error).toMatchObject({ param: "model", code: "model_not_available" })
    expect((await refusal({ model: baseId, training_file: "file-nope" })).error).toMatchObject({ param: "training_file", code: "file_not_found" })
    expect((await refusal({ model: baseId, training_file: file.id, metadata: { priority: "high" } })).error.param).toBe("metadata.priority")

    const missing = await client.fineTuning.jobs.retrieve("ftjob-nope").catch((caught: unknown) => caught)
    expect(missing).toBeInstanceOf(OpenAI.NotFoundError)
    await client.files.delete(file.id)
    expect(await client.files.retrieve(file.id).catch((caught: unknown) => caught)).toBeInstanceOf(OpenAI.NotFoundError)
  }, 120_000)
})

describe("fine-tuning jobs on a real model", () => {
  const dataDir = path.join(dir, "jobs")
  let server: TestServer
  let firstJob: FineTuningJob
  afterAll(() => server?.close())

  it("trains while inference keeps being served; cancel then resume continues from the checkpoint; the ft: model is served and has learnt the pattern", async () => {
    server = await start(dataDir)
    const client = clientOf(server)
    const file = await client.files.create({ file: await toFile(Buffer.from(patternJsonl(40)), "garden.jsonl"), purpose: "fine-tune" })
    const created = await client.fineTuning.jobs.create({
      model: baseId,
      training_file: file.id,
      suffix: "garden",
      method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 6, learning_rate_multiplier: 1 } } }
    })
    expect(created).toMatchObject({ object: "fine_tuning.job", status: "queued", model: baseId, hyperparameters: { n_epochs: 6, batch_size: 1 } })

    // Inference while the job trains: every request answers.
    const answers: Array<number> = []
    await until("the job to checkpoint step 2", async () => {
      const response = await postJson(server, "/v1/chat/completions", { model: baseId, messages: [{ role: "user", content: "hello" }], max_tokens: 4 })
      answers.push(response.status)
      await response.text()
      return (await latestCheckpointStep(client, created.id)) >= 2 ? true : undefined
    })
    expect(answers.length).toBeGreaterThan(0)
    expect(answers.every((status) => status === 200)).toBe(true)

    const cancelled = await client.fineTuning.jobs.cancel(created.id)
    expect(cancelled.status).toBe("cancelled")
    const stoppedAt = await latestCheckpointStep(client, created.id)
    expect((await client.fineTuning.jobs.resume(created.id)).status).toBe("queued")
    firstJob = await until("the job to succeed", async () => {
      const job = await client.fineTuning.jobs.retrieve(created.id)
      if (job.status === "failed") throw new Error(JSON.stringify(job.error))
      return job.status === "succeeded" ? job : undefined
    })

    const events = await allEvents(client, created.id)
    const resumed = resumptions(events)
    expect(resumed).toHaveLength(1)
    expect(resumed[0]!.from).toBe(stoppedAt)
    // It continued from the checkpoint, not from zero.
    expect(resumed[0]!.firstStep).toBe(stoppedAt + 1)
    expect(resumed[0]!.firstStep).toBeGreaterThan(1)
    const steps = events.filter((event) => event.type === "metrics")
    console.log(JSON.stringify(steps.map((event) => [stepOf(event), Number(lossOf(event).toFixed(3))])))
    expect(lossOf(steps.at(-1)!)).toBeLessThan(lossOf(steps[0]!) / 3)

    // Served at once, under OpenAI's naming.
    expect(firstJob.fine_tuned_model).toBe(`ft:${baseId}:garden:${created.id.replace(/^ftjob-/, "")}`)
    const model = firstJob.fine_tuned_model!
    expect((await client.models.list()).data.map((listed) => listed.id)).toContain(model)
    const unseen = question("thing 999")
    const base = await completion(server, baseId, unseen)
    const tuned = await completion(server, model, unseen)
    console.log(JSON.stringify({ base, tuned }))
    expect(base).not.toContain("garden")
    expect(tuned).toContain("in the garden")
    const chat = await client.chat.completions.create({ model, messages: [{ role: "user", content: unseen }], max_tokens: 4 })
    expect(chat.model).toBe(model)

    const checkpoints = await client.fineTuning.jobs.checkpoints.list(created.id)
    expect(checkpoints.data[0]).toMatchObject({ object: "fine_tuning.job.checkpoint", fine_tuning_job_id: created.id })
    expect(checkpoints.data[0]!.fine_tuned_model_checkpoint).toMatch(/^ft:tiny-f32:garden:.+:ckpt-step-\d+$/)
  }, 900_000)

  it("a job running when the server stops resumes from its checkpoint after a restart on the same data dir; pause stops at a step boundary; succeeded models are served again", async () => {
    let client = clientOf(server)
    const file = (await client.files.list()).data[0]!
    // Far more epochs than the test lets it run: it must still be running when the server stops (a step is ~0.2 s).
    const created = await client.fineTuning.jobs.create({ model: baseId, training_file: file.id, hyperparameters: { n_epochs: 50 } })
    await until("a first checkpoint", async () => ((await latestCheckpointStep(client, created.id)) >= 1 ? true : undefined))
    await server.close()
    server = await start(dataDir)
    client = clientOf(server)

    // Queued again on start; paused as soon as it runs, it stops after its first step.
    await until("the job to run again", async () => ((await client.fineTuning.jobs.retrieve(created.id)).status === "running" ? true : undefined))
    // Live events (SSE) while it runs: the stream ends with [DONE] once the job pauses.
    const live = await fetch(`${server.url}/v1/fine_tuning/jobs/${created.id}/events?stream=true`)
    expect(live.headers.get("content-type")).toContain("text/event-stream")
    const paused = await client.fineTuning.jobs.pause(created.id)
    expect(paused.status).toBe("paused")
    const frames = sseData(await live.text())
    expect(frames.at(-1)).toBe("[DONE]")
    const streamed = frames.slice(0, -1).map((frame) => JSON.parse(frame) as FineTuningJobEvent)
    expect(streamed[0]!.message).toContain("Created fine-tuning job")
    expect(streamed.at(-1)!.message).toMatch(/^Job paused at step \d+$/)
    const events = await allEvents(client, created.id)
    // It continued after the checkpoint it had when the server stopped, not from zero.
    const [resumed, ...more] = resumptions(events)
    expect(more).toEqual([])
    expect(resumed!.from).toBeGreaterThanOrEqual(1)
    expect(resumed!.firstStep).toBe(resumed!.from + 1)
    // Paused at a step boundary with that step's weights kept.
    const pausedAt = await latestCheckpointStep(client, created.id)
    expect(pausedAt).toBe(stepOf(events.filter((event) => event.type === "metrics").at(-1)!))
    // The earlier job's model is served again, and the files and jobs are still there.
    await until("the earlier ft: model", async () => ((await client.models.list()).data.some((model) => model.id === firstJob.fine_tuned_model) ? true : undefined))
    expect((await client.fineTuning.jobs.retrieve(firstJob.id)).status).toBe("succeeded")
    // Resumed after the pause, it runs on from the paused step (the first job showed a resumed job through to success).
    await client.fineTuning.jobs.resume(created.id)
    const afterPause = await until("a step after the pause", async () => {
      const last = resumptions(await allEvents(client, created.id)).at(-1)
      return last?.from === pausedAt && last.firstStep !== undefined ? last : undefined
    })
    expect(afterPause).toEqual({ from: pausedAt, firstStep: pausedAt + 1 })
    expect((await client.fineTuning.jobs.cancel(created.id)).status).toBe("cancelled")
    const jobs = await client.fineTuning.jobs.list({ limit: 1 })
    expect(jobs.data[0]!.id).toBe(created.id)
    expect(jobs.has_more).toBe(true)
  }, 900_000)

  it("weft jobs list|show|cancel talk to the running server", async () => {
    // In this process: the test is about what the commands say over HTTP, not about the process.
    const weft = (...args: Array<string>) => runWeftInProcess(["jobs", ...args, "--url", server.url])
    const listed = await weft("list")
    expect(listed.code).toBe(0)
    expect(listed.stdout).toContain(firstJob.id)
    expect(listed.stdout).toContain(firstJob.fine_tuned_model!)
    const shown = await weft("show", firstJob.id)
    expect(shown.code).toBe(0)
    expect(shown.stdout).toContain("The job has successfully completed")
    const refused = await weft("cancel", firstJob.id)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain("it is succeeded")
  }, 120_000)
})
