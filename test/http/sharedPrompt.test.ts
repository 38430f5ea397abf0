import { Effect } from "effect"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import type { RequestRecord } from "../../src/scheduler/RequestLifecycle.js"
import { startServer, waitForHealth } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

/** The scheduler's records of a response's choices: `id` for choice 0, `id-i` for choice i. */
const choiceRecords = async (server: TestServer, id: string, choices: number): Promise<ReadonlyArray<RequestRecord>> => {
  const { recent } = await Effect.runPromise(server.engine.scheduler.inspect)
  const ids = Array.from({ length: choices }, (_, index) => (index === 0 ? id : `${id}-${index}`))
  return ids.map((wanted) => {
    const record = recent.find((each) => each.id === wanted)
    if (record === undefined) throw new Error(`no record of ${wanted}`)
    return record
  })
}

/** Prompt tokens each choice evaluated itself (those not already in its slot's KV). */
const evaluated = (records: ReadonlyArray<RequestRecord>) => records.map((record) => record.promptTokens - (record.cachedTokens ?? 0))

describe("the choices of one prompt share its evaluation (tiny model)", () => {
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(tinyBackend())
    client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
  })
  afterAll(() => server?.close())

  /** A prompt no earlier request shares more than the chat template's first tokens with. */
  const uniquePrompt = (tag: string) =>
    `${tag}: ${Array.from({ length: 40 }, (_, i) => `word${i}${tag}`).join(" ")}`

  it("n: 3 evaluates the prompt once: the other two choices copy all but its last token", async () => {
    const completion = await client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "user", content: uniquePrompt("blocking") }],
      n: 3,
      max_tokens: 6,
      ignore_eos: true,
      seed: 3
    } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    const prompt = completion.usage!.prompt_tokens
    const records = await choiceRecords(server, completion.id, 3)
    expect(records.every((record) => record.promptTokens === prompt)).toBe(true)
    // One choice evaluated the prompt (less what an earlier request's template prefix gave it); the others only the last token.
    const counts = evaluated(records).sort((a, b) => a - b)
    expect(counts.slice(0, 2)).toEqual([1, 1])
    expect(counts[2]).toBeGreaterThan(prompt / 2)
    expect(completion.usage!.completion_tokens).toBe(18)
    expect(new Set(completion.choices.map((choice) => choice.message.content)).size).toBe(3)
    await waitForHealth(server, (body) => body.slots.free === body.slots.total)
  })

  it("a copied prompt samples like an evaluated one: each choice is what its own seed gives alone", async () => {
    const content = uniquePrompt("seeded")
    const request = { model: tinyModelId, messages: [{ role: "user" as const, content }], max_tokens: 6, ignore_eos: true }
    const shared = await client.chat.completions.create({ ...request, n: 3, seed: 20 } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    for (const [choice, seed] of [[1, 21], [2, 22]] as const) {
      const alone = await client.chat.completions.create({ ...request, seed } as OpenAI.ChatCompletionCreateParamsNonStreaming)
      expect(shared.choices[choice]!.message.content).toBe(alone.choices[0]!.message.content)
    }
  })

  it("streams n: 3 with the prompt evaluated once", async () => {
    const stream = await client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "user", content: uniquePrompt("streamed") }],
      n: 3,
      max_tokens: 4,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true }
    } as OpenAI.ChatCompletionCreateParamsStreaming)
    let id = ""
    let usage: OpenAI.CompletionUsage | undefined
    const finished = new Set<number>()
    for await (const chunk of stream) {
      id = chunk.id
      if (chunk.usage) usage = chunk.usage
      for (const choice of chunk.choices) if (choice.finish_reason !== null) finished.add(choice.index)
    }
    expect([...finished].sort()).toEqual([0, 1, 2])
    expect(usage!.completion_tokens).toBe(12)
    const counts = evaluated(await choiceRecords(server, id, 3)).sort((a, b) => a - b)
    expect(counts.slice(0, 2)).toEqual([1, 1])
  })

  it("a prompt array shares each prompt among its own choices only", async () => {
    const completion = await client.completions.create({
      model: tinyModelId,
      prompt: [uniquePrompt("first"), uniquePrompt("second")],
      n: 2,
      max_tokens: 3,
      ignore_eos: true
    } as OpenAI.CompletionCreateParamsNonStreaming)
    const records = await choiceRecords(server, completion.id, 4)
    for (const pair of [records.slice(0, 2), records.slice(2)]) {
      expect(evaluated(pair).sort((a, b) => a - b)[0]).toBe(1)
      expect(pair[0]!.promptTokens).toBe(pair[1]!.promptTokens)
    }
  })
})

describe("shared prompts with fewer slots than choices (SimBackend, one slot)", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 100_000, tokenLatency: 1 }))
  })
  afterAll(() => server?.close())

  it("runs the choices in turn, each later one reusing the prompt the slot still holds", async () => {
    const client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
    const completion = await client.completions.create({ model: "sim", prompt: "a shared prompt", n: 3, max_tokens: 5, ignore_eos: true, seed: 1 } as OpenAI.CompletionCreateParamsNonStreaming)
    expect(completion.choices.map((choice) => choice.finish_reason)).toEqual(["length", "length", "length"])
    const counts = evaluated(await choiceRecords(server, completion.id, 3)).sort((a, b) => a - b)
    expect(counts).toEqual([1, 1, completion.usage!.prompt_tokens])
    await waitForHealth(server, (body) => body.slots.free === body.slots.total)
  })
})
