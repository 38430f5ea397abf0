import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postJson, startServer, waitForHealth } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const utf8Bytes = (text: string) => Array.from(new TextEncoder().encode(text))

/** An entry of chat `logprobs.content` or of its `top_logprobs`, checked against OpenAI's shape. */
const expectTokenLogprob = (entry: { token: string; logprob: number; bytes: Array<number> | null }) => {
  expect(typeof entry.token).toBe("string")
  expect(entry.logprob).toBeLessThanOrEqual(0)
  expect(Number.isFinite(entry.logprob)).toBe(true)
  expect(entry.bytes).toEqual(utf8Bytes(entry.token))
}

type ContentLogprob = OpenAI.Chat.Completions.ChatCompletionTokenLogprob

/** Every token's own logprob shows among its alternatives when it is among the top ones, and they sum to at most 1. */
const expectConsistent = (content: ReadonlyArray<ContentLogprob>, topCount: number) => {
  for (const entry of content) {
    expectTokenLogprob(entry)
    expect(entry.top_logprobs).toHaveLength(Math.min(topCount, entry.top_logprobs.length))
    expect(entry.top_logprobs.length).toBeGreaterThan(0)
    entry.top_logprobs.forEach(expectTokenLogprob)
    const values = entry.top_logprobs.map((top) => top.logprob)
    expect([...values].sort((a, b) => b - a)).toEqual(values)
    expect(values.reduce((sum, value) => sum + Math.exp(value), 0)).toBeLessThanOrEqual(1 + 1e-6)
    if (entry.logprob >= values[values.length - 1]!) {
      expect(entry.top_logprobs.some((top) => top.token === entry.token && Math.abs(top.logprob - entry.logprob) < 1e-9)).toBe(true)
    }
  }
}

describe("logprobs, n and prompt arrays against the tiny model", () => {
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(tinyBackend())
    client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
  })
  afterAll(() => server?.close())

  const chat = { model: tinyModelId, messages: [{ role: "user" as const, content: "Tell me a story" }], max_tokens: 6, ignore_eos: true, seed: 11 }

  it("chat logprobs with top_logprobs=3 in OpenAI's shape, one entry per generated token", async () => {
    const completion = await client.chat.completions.create({ ...chat, logprobs: true, top_logprobs: 3 } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    const choice = completion.choices[0]!
    expect(choice.logprobs).not.toBeNull()
    const content = choice.logprobs!.content!
    expect(content).toHaveLength(completion.usage!.completion_tokens)
    expect(choice.logprobs!.refusal).toBeNull()
    expectConsistent(content, 3)
    expect(content.map((entry) => entry.token).join("")).toBe(choice.message.content)
  })

  it("chat logprobs without top_logprobs give empty alternative lists; no logprobs means null", async () => {
    const withLogprobs = await client.chat.completions.create({ ...chat, logprobs: true } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    for (const entry of withLogprobs.choices[0]!.logprobs!.content!) expect(entry.top_logprobs).toEqual([])
    const without = await client.chat.completions.create(chat as OpenAI.ChatCompletionCreateParamsNonStreaming)
    expect(without.choices[0]!.logprobs).toBeNull()
  })

  it("streams each chunk with the logprobs of the tokens it carries", async () => {
    const stream = await client.chat.completions.create({ ...chat, logprobs: true, top_logprobs: 2, stream: true, stream_options: { include_usage: true } } as OpenAI.ChatCompletionCreateParamsStreaming)
    let text = ""
    const entries: Array<ContentLogprob> = []
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage
      for (const choice of chunk.choices) {
        const content = choice.delta.content ?? ""
        text += content
        const logprobs = choice.logprobs?.content ?? []
        if (content !== "") expect(logprobs.map((entry) => entry.token).join("")).toBe(content)
        entries.push(...logprobs)
      }
    }
    expect(entries).toHaveLength(usage!.completion_tokens)
    expect(entries.map((entry) => entry.token).join("")).toBe(text)
    expectConsistent(entries, 2)
  })

  it("legacy completion logprobs=2: tokens, token_logprobs, top_logprobs and text_offset", async () => {
    const completion = await client.completions.create({ model: tinyModelId, prompt: "Once upon a time", max_tokens: 5, ignore_eos: true, seed: 3, logprobs: 2 } as OpenAI.CompletionCreateParamsNonStreaming)
    const choice = completion.choices[0]!
    const logprobs = choice.logprobs!
    expect(logprobs.tokens).toHaveLength(completion.usage!.completion_tokens)
    expect(logprobs.tokens!.join("")).toBe(choice.text)
    expect(logprobs.token_logprobs).toHaveLength(logprobs.tokens!.length)
    for (const value of logprobs.token_logprobs!) expect(value).toBeLessThanOrEqual(0)
    expect(logprobs.top_logprobs).toHaveLength(logprobs.tokens!.length)
    for (const top of logprobs.top_logprobs!) {
      expect(Object.keys(top).length).toBeGreaterThan(0)
      expect(Object.keys(top).length).toBeLessThanOrEqual(2)
      for (const value of Object.values(top)) expect(value).toBeLessThanOrEqual(0)
    }
    let offset = 0
    logprobs.tokens!.forEach((token, i) => {
      expect(logprobs.text_offset![i]).toBe(offset)
      offset += [...token].length
    })
  })

  it("rejects top_logprobs above 20 and legacy logprobs above 5", async () => {
    const chatError = await client.chat.completions.create({ ...chat, logprobs: true, top_logprobs: 21 } as OpenAI.ChatCompletionCreateParamsNonStreaming).catch((error: unknown) => error)
    expect(chatError).toBeInstanceOf(OpenAI.BadRequestError)
    expect((chatError as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("top_logprobs")
    const legacyError = await client.completions.create({ model: tinyModelId, prompt: "x", logprobs: 6 }).catch((error: unknown) => error)
    expect(legacyError).toBeInstanceOf(OpenAI.BadRequestError)
    expect((legacyError as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("logprobs")
  })

  it("n: 3 with a seed gives three seeded choices, usage summed, the same three again on repeat", async () => {
    const request = { ...chat, n: 3, max_tokens: 8 } as OpenAI.ChatCompletionCreateParamsNonStreaming
    const single = await client.chat.completions.create({ ...chat, max_tokens: 8 } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    const first = await client.chat.completions.create(request)
    expect(first.choices.map((choice) => choice.index)).toEqual([0, 1, 2])
    const texts = first.choices.map((choice) => choice.message.content)
    expect(new Set(texts).size).toBe(3)
    // Choice 0 samples with the request's own seed, so it is what n=1 gives.
    expect(texts[0]).toBe(single.choices[0]!.message.content)
    expect(first.usage!.prompt_tokens).toBe(single.usage!.prompt_tokens)
    expect(first.usage!.completion_tokens).toBe(24)
    expect(first.usage!.total_tokens).toBe(first.usage!.prompt_tokens + 24)
    for (const choice of first.choices) expect(choice.finish_reason).toBe("length")
    const again = await client.chat.completions.create(request)
    expect(again.choices.map((choice) => choice.message.content)).toEqual(texts)
    await waitForHealth(server, (body) => body.slots.free === body.slots.total)
  })

  it("streams n: 2 interleaved, each chunk naming its choice, each choice finishing on its own", async () => {
    const stream = await client.chat.completions.create({ ...chat, n: 2, stream: true, stream_options: { include_usage: true } } as OpenAI.ChatCompletionCreateParamsStreaming)
    const texts = ["", ""]
    const finishes: Array<string | null> = [null, null]
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage
      for (const choice of chunk.choices) {
        texts[choice.index] += choice.delta.content ?? ""
        if (choice.finish_reason !== null) finishes[choice.index] = choice.finish_reason
      }
    }
    expect(finishes).toEqual(["length", "length"])
    expect(texts.every((text) => text.length > 0)).toBe(true)
    expect(usage!.completion_tokens).toBe(12)
    const blocking = await client.chat.completions.create({ ...chat, n: 2 } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    expect(blocking.choices.map((choice) => choice.message.content)).toEqual(texts)
  })

  it("a prompt array of 2 strings with n: 2 gives 4 choices, index = prompt × n + choice", async () => {
    const prompts = ["Once upon a time", "The weather today"]
    const completion = await client.completions.create({ model: tinyModelId, prompt: prompts, n: 2, max_tokens: 4, ignore_eos: true, seed: 5 } as OpenAI.CompletionCreateParamsNonStreaming)
    expect(completion.choices.map((choice) => choice.index)).toEqual([0, 1, 2, 3])
    const singles = await Promise.all(prompts.map((prompt) =>
      client.completions.create({ model: tinyModelId, prompt, max_tokens: 4, ignore_eos: true, seed: 5 } as OpenAI.CompletionCreateParamsNonStreaming)
    ))
    expect(completion.choices[0]!.text).toBe(singles[0]!.choices[0]!.text)
    expect(completion.choices[2]!.text).toBe(singles[1]!.choices[0]!.text)
    expect(completion.usage!.prompt_tokens).toBe(singles[0]!.usage!.prompt_tokens + singles[1]!.usage!.prompt_tokens)
    expect(completion.usage!.completion_tokens).toBe(16)
  })

  it("streams a prompt array with n: 2 and legacy logprobs: each chunk names its choice, offsets continue, as blocking", async () => {
    const request = { model: tinyModelId, prompt: ["Once upon a time", "The weather today"], n: 2, max_tokens: 5, ignore_eos: true, seed: 9, logprobs: 2 }
    const stream = await client.completions.create({ ...request, stream: true } as OpenAI.CompletionCreateParamsStreaming)
    const texts = ["", "", "", ""]
    const tokens: Array<Array<string>> = [[], [], [], []]
    const finishes: Array<string | null> = [null, null, null, null]
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        const before = [...texts[choice.index]!].length
        if (choice.logprobs?.tokens !== undefined && choice.logprobs.tokens.length > 0) {
          // Offsets count characters from the start of the choice's own text.
          expect(choice.logprobs.text_offset![0]).toBe([...tokens[choice.index]!.join("")].length)
          tokens[choice.index]!.push(...choice.logprobs.tokens)
        }
        texts[choice.index] += choice.text
        expect([...texts[choice.index]!].length).toBeGreaterThanOrEqual(before)
        if (choice.finish_reason !== null) finishes[choice.index] = choice.finish_reason
      }
    }
    expect(finishes).toEqual(["length", "length", "length", "length"])
    for (const [index, text] of texts.entries()) expect(tokens[index]!.join("")).toBe(text)
    const blocking = await client.completions.create(request as OpenAI.CompletionCreateParamsNonStreaming)
    expect(blocking.choices.map((choice) => choice.text)).toEqual(texts)
    expect(blocking.choices.map((choice) => choice.logprobs!.tokens)).toEqual(tokens)
  })

  it("takes token prompts: a list of ints and a list of lists", async () => {
    const one = await client.completions.create({ model: tinyModelId, prompt: [5, 6, 7], max_tokens: 2, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming)
    expect(one.choices).toHaveLength(1)
    const two = await client.completions.create({ model: tinyModelId, prompt: [[5, 6, 7], [8, 9]], max_tokens: 2, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming)
    expect(two.choices.map((choice) => choice.index)).toEqual([0, 1])
    const outOfVocab = await client.completions.create({ model: tinyModelId, prompt: [1e9], max_tokens: 2 }).catch((error: unknown) => error)
    expect(outOfVocab).toBeInstanceOf(OpenAI.BadRequestError)
    expect((outOfVocab as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("prompt")
  })

  it("answers n over the cap with 400 naming n, and every slot is free after", async () => {
    const error = await client.chat.completions.create({ ...chat, n: 17 } as OpenAI.ChatCompletionCreateParamsNonStreaming).catch((error: unknown) => error)
    expect(error).toBeInstanceOf(OpenAI.BadRequestError)
    expect((error as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("n")
    const tooMany = await client.completions.create({ model: tinyModelId, prompt: ["a", "b", "c"], n: 6 }).catch((error: unknown) => error)
    expect(tooMany).toBeInstanceOf(OpenAI.BadRequestError)
    const inSession = await client.chat.completions.create({ ...chat, n: 2, session_id: "s1" } as OpenAI.ChatCompletionCreateParamsNonStreaming).catch((error: unknown) => error)
    expect(inSession).toBeInstanceOf(OpenAI.BadRequestError)
    expect((inSession as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("n")
    await waitForHealth(server, (body) => body.slots.free === body.slots.total)
  })
})

describe("a failing choice fails the request and cancels the others (SimBackend behind the real server)", () => {
  let server: TestServer
  const failing = "FAIL"
  const includes = (haystack: ReadonlyArray<number>, needle: string) => {
    const bytes = Array.from(new TextEncoder().encode(needle))
    return haystack.some((_, at) => bytes.every((byte, i) => haystack[at + i] === byte))
  }

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({
      parallel: 4,
      contextSize: 1_000_000,
      tokenLatency: 2,
      script: (prompt) => (includes(prompt, failing) ? { failAtToken: 3 } : {})
    }))
  })
  afterAll(() => server?.close())

  // The healthy choice would run for minutes: only its cancellation frees its slot in time.
  const body = (stream: boolean) => ({ model: "sim", prompt: ["fine", failing], n: 2, max_tokens: 100_000, ignore_eos: true, stream })

  it("answers a blocking request with the failure", async () => {
    const response = await postJson(server, "/v1/completions", body(false))
    expect(response.status).toBe(500)
    const reply = (await response.json()) as { error: { type: string } }
    expect(reply.error.type).toBe("server_error")
    await waitForHealth(server, (health) => health.slots.free === health.slots.total)
  })

  it("ends a stream with an in-band error and no [DONE]", async () => {
    const response = await postJson(server, "/v1/completions", body(true))
    expect(response.status).toBe(200)
    const text = await response.text()
    const frames = text.split("\n\n").filter((frame) => frame.startsWith("data: ")).map((frame) => frame.slice(6))
    expect(frames.at(-1)).toMatch(/"error"/)
    expect(frames).not.toContain("[DONE]")
    const indices = new Set(frames.slice(0, -1).map((frame) => (JSON.parse(frame) as { choices: Array<{ index: number }> }).choices[0]!.index))
    expect(indices.size).toBeGreaterThan(1)
    await waitForHealth(server, (health) => health.slots.free === health.slots.total)
  })

  it("gives each SimBackend choice deterministic logprobs that hold the sampled token", async () => {
    const response = await postJson(server, "/v1/chat/completions", {
      model: "sim", messages: [{ role: "user", content: "hi" }], max_tokens: 4, seed: 1, n: 2, logprobs: true, top_logprobs: 3
    })
    const reply = (await response.json()) as OpenAI.ChatCompletion
    for (const choice of reply.choices) {
      const content = choice.logprobs!.content!
      expect(content).toHaveLength(4)
      for (const entry of content) {
        expect(entry.logprob).toBeCloseTo(Math.log(0.5))
        expect(entry.top_logprobs.map((top) => top.logprob)).toEqual([Math.log(0.5), Math.log(0.25), Math.log(0.125)])
      }
    }
  })
})

describe("choices beyond the queue (SimBackend, one slot, a queue of one)", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 100_000, tokenLatency: 2 }), { scheduler: { maxQueue: 1 } })
  })
  afterAll(() => server?.close())

  const body = (stream: boolean) => ({ model: "sim", prompt: "x", n: 4, max_tokens: 50, ignore_eos: true, stream })

  it("answers a blocking request with 429 once its choices overflow the queue", async () => {
    const response = await postJson(server, "/v1/completions", body(false))
    expect(response.status).toBe(429)
    await waitForHealth(server, (health) => health.slots.free === health.slots.total && health.queue.length === 0)
  })

  it("answers a stream with 429, or an in-band error once it started, never a broken connection", async () => {
    for (let attempt = 0; attempt < 5; attempt++) {
      const response = await postJson(server, "/v1/completions", body(true))
      if (response.status === 429) continue
      expect(response.status).toBe(200)
      const frames = (await response.text()).split("\n\n").filter((frame) => frame.startsWith("data: "))
      expect(frames.at(-1)).toMatch(/"error"/)
    }
    await waitForHealth(server, (health) => health.slots.free === health.slots.total && health.queue.length === 0)
    const ok = await postJson(server, "/v1/completions", { ...body(false), n: 2 })
    expect(ok.status).toBe(200)
  })
})
