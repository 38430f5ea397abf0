// Inference latency with and without a fine-tuning job training beside it, and the job's training speed, against a
// running `weft serve` (see README, "Fine-tuning jobs"). Usage:
//   npx weft model generate --preset tiny --weights f32 --context-length 256 --out /tmp/ft/tiny-f32.gguf
//   npx weft serve --model /tmp/ft/tiny-f32.gguf --model-id tiny-f32 --ctx-size 256 --parallel 2 --data-dir /tmp/ft/data --port 8199 &
//   npx tsx examples/fine-tuning-load.ts http://127.0.0.1:8199 tiny-f32 [requests]
import OpenAI, { toFile } from "openai"

const [url = "http://127.0.0.1:8080", model = "tiny-f32", count = "20"] = process.argv.slice(2)
const requests = Number(count)
const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: process.env["WEFT_API_KEY"] ?? "unused", maxRetries: 0 })

const percentile = (sorted: ReadonlyArray<number>, fraction: number) => sorted[Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1)]!

/** `requests` chat requests one after another: p50 and p99 latency in ms, and how many failed. */
const latencies = async () => {
  const times: Array<number> = []
  let failures = 0
  for (let at = 0; at < requests; at++) {
    const started = performance.now()
    try {
      await client.chat.completions.create({ model, messages: [{ role: "user", content: `Say something about the number ${at}.` }], max_tokens: 16 })
      times.push(performance.now() - started)
    } catch {
      failures++
    }
  }
  times.sort((a, b) => a - b)
  return { p50: Math.round(percentile(times, 0.5)), p99: Math.round(percentile(times, 0.99)), failures }
}

/** The job's latest step. */
const latestStep = async (id: string) => {
  const page = await client.fineTuning.jobs.listEvents(id, { limit: 20 })
  const metrics = page.data.find((event) => event.type === "metrics")
  return metrics === undefined ? 0 : (metrics.data as { step: number }).step
}

/** Training steps per second over `seconds` (each step is one 256-token window at batch size 1). */
const trainingRate = async (id: string, during: () => Promise<unknown>) => {
  const fromStep = await latestStep(id)
  const started = performance.now()
  const result = await during()
  const steps = (await latestStep(id)) - fromStep
  const seconds = (performance.now() - started) / 1000
  return { result, stepsPerSecond: steps / seconds, tokensPerSecond: (steps * 256) / seconds }
}

const idle = await latencies()
const dataset = Array.from({ length: 40 }, (_, at) => JSON.stringify({ prompt: `Q: where is the thing ${at}?\nA:`, completion: " in the garden\n" })).join("\n")
const file = await client.files.create({ file: await toFile(Buffer.from(dataset), "garden.jsonl"), purpose: "fine-tune" })
const job = await client.fineTuning.jobs.create({ model, training_file: file.id, hyperparameters: { n_epochs: 50 } })
while ((await latestStep(job.id)) < 1) await new Promise((resolve) => setTimeout(resolve, 250))
const busy = await trainingRate(job.id, latencies)
const alone = await trainingRate(job.id, () => new Promise((resolve) => setTimeout(resolve, 20_000)))
await client.fineTuning.jobs.cancel(job.id)

console.log(`inference, no job:        p50 ${idle.p50} ms  p99 ${idle.p99} ms  failures ${idle.failures}/${requests}`)
const during = busy.result as typeof idle
console.log(`inference, job training:  p50 ${during.p50} ms  p99 ${during.p99} ms  failures ${during.failures}/${requests}`)
console.log(`training beside inference: ${busy.tokensPerSecond.toFixed(1)} tokens/s (${busy.stepsPerSecond.toFixed(2)} steps/s)`)
console.log(`training alone:            ${alone.tokensPerSecond.toFixed(1)} tokens/s (${alone.stepsPerSecond.toFixed(2)} steps/s)`)
