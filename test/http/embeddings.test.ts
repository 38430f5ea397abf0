import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { maxEmbeddingInputs } from "../../src/http/EmbeddingRoutes.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const norm = (vector: ReadonlyArray<number>) => Math.hypot(...vector)

/** OpenAI's base64 encoding: little-endian float32 values. */
const decodeBase64 = (text: string): Array<number> => {
  const bytes = Buffer.from(text, "base64")
  return Array.from({ length: bytes.length / 4 }, (_, index) => bytes.readFloatLE(index * 4))
}

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

describe("/v1/embeddings against the tiny model", () => {
  let server: TestServer
  let client: OpenAI

  const tokensOf = async (content: string): Promise<Array<number>> => {
    const response = await postJson(server, "/tokenize", { content, parse_special: false })
    return ((await response.json()) as { tokens: Array<number> }).tokens
  }

  const expectRefused = async (body: unknown, param: string | null, code: string | null, status = 400) => {
    const response = await postJson(server, "/v1/embeddings", { model: tinyModelId, ...(body as object) })
    const answer = (await response.json()) as ErrorBody
    expect({ status: response.status, param: answer.error.param, code: answer.error.code }).toEqual({ status, param, code })
    expect(answer.error.type).toBe("invalid_request_error")
    return answer
  }

  beforeAll(async () => {
    server = await startServer(tinyBackend())
    client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
  })
  afterAll(() => server?.close())

  it("embeds a string: one unit vector of the model's size, OpenAI's shape, usage counting the input's tokens", async () => {
    const answer = await client.embeddings.create({ model: tinyModelId, input: "hello world", encoding_format: "float" })
    expect(answer.object).toBe("list")
    expect(answer.model).toBe(tinyModelId)
    expect(answer.data).toHaveLength(1)
    expect(answer.data[0]).toMatchObject({ object: "embedding", index: 0 })
    const vector = answer.data[0]!.embedding
    expect(vector).toHaveLength(server.engine.backend.info.embeddingSize)
    expect(norm(vector)).toBeCloseTo(1, 5)
    const tokens = await tokensOf("hello world")
    expect(answer.usage).toEqual({ prompt_tokens: tokens.length, total_tokens: tokens.length })
  })

  it("embeds an array of strings in order: same text, same vector; different texts, different vectors", async () => {
    const inputs = ["the cat sat", "on the mat", "the cat sat"]
    const answer = await client.embeddings.create({ model: tinyModelId, input: inputs, encoding_format: "float" })
    expect(answer.data.map((item) => item.index)).toEqual([0, 1, 2])
    const [first, second, third] = answer.data.map((item) => item.embedding)
    expect(third).toEqual(first)
    expect(second).not.toEqual(first)
    const single = await client.embeddings.create({ model: tinyModelId, input: "on the mat", encoding_format: "float" })
    expect(single.data[0]!.embedding).toEqual(second)
    const counts = await Promise.all(inputs.map(tokensOf))
    const total = counts.reduce((sum, one) => sum + one.length, 0)
    expect(answer.usage).toEqual({ prompt_tokens: total, total_tokens: total })
  })

  it("embeds token arrays exactly as the text they spell", async () => {
    const [a, b] = await Promise.all([tokensOf("hello world"), tokensOf("good night")])
    const texts = await client.embeddings.create({ model: tinyModelId, input: ["hello world", "good night"], encoding_format: "float" })
    const one = await client.embeddings.create({ model: tinyModelId, input: a!, encoding_format: "float" })
    expect(one.data[0]!.embedding).toEqual(texts.data[0]!.embedding)
    const many = await client.embeddings.create({ model: tinyModelId, input: [a!, b!], encoding_format: "float" })
    expect(many.data.map((item) => item.embedding)).toEqual(texts.data.map((item) => item.embedding))
    expect(many.usage.prompt_tokens).toBe(a!.length + b!.length)
  })

  it("answers base64 as little-endian float32 equal to the float answer (the client's default decodes it)", async () => {
    const float = await client.embeddings.create({ model: tinyModelId, input: "base64 please", encoding_format: "float" })
    const response = await postJson(server, "/v1/embeddings", { model: tinyModelId, input: "base64 please", encoding_format: "base64" })
    const raw = (await response.json()) as { data: Array<{ embedding: string }> }
    expect(typeof raw.data[0]!.embedding).toBe("string")
    expect(decodeBase64(raw.data[0]!.embedding)).toEqual(float.data[0]!.embedding)
    // Without encoding_format the openai client asks for base64 and decodes it itself.
    const byDefault = await client.embeddings.create({ model: tinyModelId, input: "base64 please" })
    expect(byDefault.data[0]!.embedding).toEqual(float.data[0]!.embedding)
  })

  it("accepts `dimensions` equal to the model's size and `user`; refuses any other size with a 400 naming it", async () => {
    const size = server.engine.backend.info.embeddingSize
    const same = await client.embeddings.create({ model: tinyModelId, input: "x", dimensions: size, user: "u1", encoding_format: "float" })
    expect(same.data[0]!.embedding).toHaveLength(size)
    const refused = await client.embeddings.create({ model: tinyModelId, input: "x", dimensions: size / 2 }).then(
      () => undefined,
      (error: unknown) => error
    )
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError)
    expect((refused as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("dimensions")
  })

  it("refuses empty input, an empty string, and an empty token array, naming the input", async () => {
    await expectRefused({ input: "" }, "input", "invalid_value")
    await expectRefused({ input: [] }, "input", "invalid_value")
    await expectRefused({ input: ["fine", ""] }, "input[1]", "invalid_value")
    await expectRefused({ input: [[1, 2], []] }, "input[1]", "invalid_value")
    await expectRefused({}, "input", "missing_required_parameter")
    await expectRefused({ input: "x", encoding_format: "float16" }, "encoding_format", "invalid_type")
  })

  it("refuses an input longer than the model's context with context_length_exceeded", async () => {
    const limit = server.engine.backend.info.maxEmbeddingTokens
    const tokens = await tokensOf("a")
    await expectRefused({ input: Array.from({ length: limit + 1 }, () => tokens[0]!) }, "input", "context_length_exceeded")
    await expectRefused({ input: ["ok", "word ".repeat(limit + 1)] }, "input[1]", "context_length_exceeded")
  })

  it("refuses token ids outside the vocabulary and more than 2048 inputs", async () => {
    const vocabSize = server.engine.backend.info.vocabSize
    await expectRefused({ input: [[1], [vocabSize]] }, "input[1]", "invalid_token")
    await expectRefused({ input: [-1] }, "input", "invalid_token")
    await expectRefused({ input: Array.from({ length: maxEmbeddingInputs + 1 }, () => "x") }, "input", "invalid_value")
  })

  it("serves many embeddings while a chat stream runs: all succeed, the stream is unaffected", async () => {
    const streamed = client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "user", content: "tell me a long story" }],
      max_tokens: 48,
      ignore_eos: true,
      seed: 3,
      stream: true,
      stream_options: { include_usage: true }
    } as OpenAI.ChatCompletionCreateParamsStreaming)
    const alone = await client.chat.completions.create({
      model: tinyModelId,
      messages: [{ role: "user", content: "tell me a long story" }],
      max_tokens: 48,
      ignore_eos: true,
      seed: 3
    } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    const stream = await streamed
    const embeddings = Promise.all(
      Array.from({ length: 16 }, (_, index) =>
        client.embeddings.create({ model: tinyModelId, input: [`text ${index}`, `other ${index}`], encoding_format: "float" }))
    )
    let text = ""
    let usage: OpenAI.CompletionUsage | undefined | null
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? ""
      usage = chunk.usage ?? usage
    }
    const answers = await embeddings
    expect(answers.every((answer) => answer.data.length === 2)).toBe(true)
    const reference = await client.embeddings.create({ model: tinyModelId, input: ["text 5", "other 5"], encoding_format: "float" })
    expect(answers[5]!.data.map((item) => item.embedding)).toEqual(reference.data.map((item) => item.embedding))
    // Same seed, same prompt: the streamed text is what it is without embeddings running beside it.
    expect(text).toBe(alone.choices[0]!.message.content)
    expect(usage?.completion_tokens).toBe(alone.usage?.completion_tokens)
  })
})
