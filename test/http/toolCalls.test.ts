import { Effect } from "effect"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const weatherParameters = {
  type: "object",
  properties: {
    city: { type: "string", enum: ["Paris", "Oslo", "Lima"] },
    days: { type: "integer" },
    metric: { type: "boolean" }
  },
  required: ["city", "days", "metric"],
  additionalProperties: false
} as const

const timeParameters = {
  type: "object",
  properties: { zone: { type: "string", enum: ["UTC", "CET"] } },
  required: ["zone"],
  additionalProperties: false
} as const

const weatherTool: OpenAI.ChatCompletionTool = {
  type: "function",
  function: { name: "get_weather", description: "The weather forecast of a city", parameters: weatherParameters, strict: true }
}
const timeTool: OpenAI.ChatCompletionTool = {
  type: "function",
  function: { name: "get_time", description: "The time in a zone", parameters: timeParameters }
}

/** Whether `args` (parsed JSON) matches `get_weather`'s or `get_time`'s schema exactly. */
const validArguments = (name: string, args: unknown): boolean => {
  if (typeof args !== "object" || args === null || Array.isArray(args)) return false
  const record = args as Record<string, unknown>
  if (name === "get_weather") {
    return Object.keys(record).sort().join(",") === "city,days,metric" &&
      ["Paris", "Oslo", "Lima"].includes(record["city"] as string) && Number.isSafeInteger(record["days"]) &&
      typeof record["metric"] === "boolean"
  }
  return name === "get_time" && Object.keys(record).join(",") === "zone" && ["UTC", "CET"].includes(record["zone"] as string)
}

const functionCallOf = (call: OpenAI.ChatCompletionMessageToolCall) => {
  expect(call.type).toBe("function")
  return (call as OpenAI.ChatCompletionMessageFunctionToolCall).function
}

const expectValidCall = (call: OpenAI.ChatCompletionMessageToolCall, names: ReadonlyArray<string>) => {
  expect(call.id).toMatch(/^call_[A-Za-z0-9]+$/)
  const fn = functionCallOf(call)
  expect(names).toContain(fn.name)
  expect(typeof fn.arguments).toBe("string")
  expect(validArguments(fn.name, JSON.parse(fn.arguments)), fn.arguments).toBe(true)
}

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

const user = (content: string): OpenAI.ChatCompletionMessageParam => ({ role: "user", content })

describe("tool calls with the openai client against the tiny model", () => {
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 2048 }))
    client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
  })
  afterAll(() => server?.close())

  it("calls the named function with arguments that parse and validate against its schema", async () => {
    for (const seed of [1, 2, 3]) {
      const completion = await client.chat.completions.create({
        model: tinyModelId,
        messages: [user("What is the weather in Paris?")],
        tools: [weatherTool, timeTool],
        tool_choice: { type: "function", function: { name: "get_weather" } },
        parallel_tool_calls: false,
        max_tokens: 200,
        seed
      })
      const [choice] = completion.choices
      expect(choice!.finish_reason).toBe("tool_calls")
      expect(choice!.message.content).toBeNull()
      expect(choice!.message.tool_calls).toHaveLength(1)
      expectValidCall(choice!.message.tool_calls![0]!, ["get_weather"])
    }
  })

  it("streams the call as OpenAI does: id, type and name first, then argument fragments, never the markup", async () => {
    const stream = client.chat.completions.stream({
      model: tinyModelId,
      messages: [user("What is the weather in Oslo?")],
      tools: [weatherTool],
      tool_choice: { type: "function", function: { name: "get_weather" } },
      parallel_tool_calls: false,
      max_tokens: 200,
      seed: 5
    })
    const chunks: Array<OpenAI.ChatCompletionChunk> = []
    stream.on("chunk", (chunk) => chunks.push(chunk))
    const completion = await stream.finalChatCompletion()
    const [choice] = completion.choices
    expect(choice!.finish_reason).toBe("tool_calls")
    expect(choice!.message.tool_calls?.length).toBeGreaterThanOrEqual(1)
    for (const call of choice!.message.tool_calls!) expectValidCall(call, ["get_weather"])

    const deltas = chunks.flatMap((chunk) => chunk.choices.map((c) => c.delta))
    expect(deltas.map((delta) => delta.content ?? "").join("")).toBe("")
    const toolDeltas = deltas.flatMap((delta) => delta.tool_calls ?? [])
    const first = toolDeltas[0]!
    expect(first).toMatchObject({ index: 0, type: "function", function: { name: "get_weather", arguments: "" } })
    expect(first.id).toMatch(/^call_/)
    const rest = toolDeltas.slice(1).filter((delta) => delta.index === 0)
    expect(rest.length).toBeGreaterThan(1)
    for (const delta of rest) {
      expect(delta.id).toBeUndefined()
      expect(delta.function?.name).toBeUndefined()
    }
    expect(rest.map((delta) => delta.function!.arguments).join("")).toBe(functionCallOf(choice!.message.tool_calls![0]!).arguments)
    expect(chunks[chunks.length - 1]!.choices[0]!.finish_reason).toBe("tool_calls")
  })

  it("with `required` and two tools, calls one of them (or several in parallel), each with valid arguments", async () => {
    const names = new Set<string>()
    for (const seed of [11, 12, 13, 14]) {
      const completion = await client.chat.completions.create({
        model: tinyModelId,
        messages: [user("Weather in Lima, or the time?")],
        tools: [weatherTool, timeTool],
        tool_choice: "required",
        max_tokens: 300,
        seed
      })
      const [choice] = completion.choices
      const calls = choice!.message.tool_calls ?? []
      if (choice!.finish_reason === "length") continue
      expect(choice!.finish_reason).toBe("tool_calls")
      expect(calls.length).toBeGreaterThanOrEqual(1)
      for (const call of calls) {
        expectValidCall(call, ["get_weather", "get_time"])
        names.add(functionCallOf(call).name)
      }
      expect(new Set(calls.map((call) => call.id)).size).toBe(calls.length)
    }
    expect(names.size).toBeGreaterThanOrEqual(1)
  })

  it("with parallel_tool_calls false, makes exactly one call", async () => {
    for (const seed of [21, 22]) {
      const completion = await client.chat.completions.create({
        model: tinyModelId,
        messages: [user("Time?")],
        tools: [weatherTool, timeTool],
        tool_choice: "required",
        parallel_tool_calls: false,
        max_tokens: 200,
        seed
      })
      expect(completion.choices[0]!.finish_reason).toBe("tool_calls")
      expect(completion.choices[0]!.message.tool_calls).toHaveLength(1)
    }
  })

  it("round trip: the call and its result go back in the history, and the model answers in text", async () => {
    const tools = [weatherTool]
    const question = user("What is the weather in Paris?")
    const first = await client.chat.completions.create({
      model: tinyModelId,
      messages: [question],
      tools,
      tool_choice: { type: "function", function: { name: "get_weather" } },
      parallel_tool_calls: false,
      max_tokens: 200,
      seed: 3
    })
    const assistant = first.choices[0]!.message
    const call = assistant.tool_calls![0]!
    const result = JSON.stringify({ forecast: "sunny", temperature_c: 21, note: "a long and detailed tool result ".repeat(4) })
    const history: Array<OpenAI.ChatCompletionMessageParam> = [
      question,
      { role: "assistant", content: null, tool_calls: assistant.tool_calls! },
      { role: "tool", tool_call_id: call.id, content: result }
    ]
    const answer = await client.chat.completions.create({
      model: tinyModelId,
      messages: history,
      tools,
      tool_choice: "none",
      max_tokens: 8,
      seed: 4
    })
    const [choice] = answer.choices
    expect(["stop", "length"]).toContain(choice!.finish_reason)
    expect(choice!.message.tool_calls).toBeUndefined()
    expect(typeof choice!.message.content).toBe("string")

    // The history is rendered: the call and the result make the prompt longer than the question alone.
    const alone = await client.chat.completions.create({ model: tinyModelId, messages: [question], max_tokens: 1, seed: 4 })
    expect(answer.usage!.prompt_tokens).toBeGreaterThan(alone.usage!.prompt_tokens + result.length / 4)

    // …by the chat template, in its own tool syntax (Hermes-style for the generated models).
    const rendered = await Effect.runPromise(server.engine.backend.renderChat([
      { role: "user", content: "What is the weather in Paris?" },
      { role: "assistant", content: "", toolCalls: [{ id: call.id, name: "get_weather", arguments: functionCallOf(call).arguments }] },
      { role: "tool", content: result, toolCallId: call.id }
    ]))
    // Detokenized without special tokens: `<|im_start|>` and `<|im_end|>` render as nothing.
    const text = server.engine.backend.detokenize(rendered)
    expect(text).toContain(`assistant\n<tool_call>\n{"name": "get_weather", "arguments": ${JSON.stringify(JSON.parse(functionCallOf(call).arguments)).replaceAll(",", ", ").replaceAll(":", ": ")}}\n</tool_call>`)
    // (The synthetic SentencePiece vocabulary renders each separately tokenized piece with a leading space.)
    expect(text).toMatch(new RegExp(`<tool_response>\\n${escape(result)}\\s*</tool_response>`))
    expect(text.trimEnd().endsWith("assistant")).toBe(true)
  })

  it("offers the tools in the system prompt as the template lists them", async () => {
    const rendered = await Effect.runPromise(server.engine.backend.renderChat(
      [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }],
      [{ name: "get_time", description: "The time in a zone", parameters: timeParameters }]
    ))
    const text = server.engine.backend.detokenize(rendered)
    expect(text).toContain("Be brief.")
    expect(text).toContain("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_time\"")
    expect(text).toContain("</tools>")
  })

  it("with `auto`, the answer is either text that does not start like a call, or valid calls", async () => {
    for (const seed of [31, 32, 33]) {
      const completion = await client.chat.completions.create({
        model: tinyModelId,
        messages: [user("Weather?")],
        tools: [weatherTool, timeTool],
        max_tokens: 100,
        seed
      })
      const [choice] = completion.choices
      if (choice!.message.tool_calls !== undefined) {
        for (const call of choice!.message.tool_calls) expectValidCall(call, ["get_weather", "get_time"])
      } else {
        expect(choice!.message.content!.startsWith("<")).toBe(false)
        expect(["stop", "length"]).toContain(choice!.finish_reason)
      }
    }
  })

  it("with `none`, answers in text", async () => {
    const completion = await client.chat.completions.create({
      model: tinyModelId,
      messages: [user("Weather?")],
      tools: [weatherTool],
      tool_choice: "none",
      max_tokens: 6,
      seed: 9
    })
    const [choice] = completion.choices
    expect(choice!.message.tool_calls).toBeUndefined()
    expect(typeof choice!.message.content).toBe("string")
    expect(["stop", "length"]).toContain(choice!.finish_reason)
  })

  const expect400 = async (body: Record<string, unknown>, param: string, code: string) => {
    const response = await postJson(server, "/v1/chat/completions", { model: tinyModelId, messages: [user("Hi")], max_tokens: 4, ...body })
    expect(response.status).toBe(400)
    const { error } = (await response.json()) as { error: { param: string; code: string; type: string; message: string } }
    expect(error).toMatchObject({ param, code, type: "invalid_request_error" })
    return error.message
  }

  it("answers 400 naming tool_choice for a function that is not among the tools, or a choice without tools", async () => {
    expect(await expect400({ tools: [weatherTool], tool_choice: { type: "function", function: { name: "nope" } } }, "tool_choice", "invalid_value"))
      .toContain("nope")
    await expect400({ tool_choice: "required" }, "tool_choice", "invalid_value")
    await expect400({ tools: [weatherTool], tool_choice: "sometimes" }, "tool_choice", "invalid_value")
  })

  it("answers 400 invalid_json_schema naming the keyword of a parameters schema the grammar cannot enforce", async () => {
    const bad = { type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "string", pattern: "^x" } } } } }
    await expect400({ tools: [weatherTool, bad] }, "tools[1].function.parameters.properties.a.pattern", "invalid_json_schema")
    const notObject = { type: "function", function: { name: "g", parameters: { type: "string" } } }
    await expect400({ tools: [notObject] }, "tools[0].function.parameters.type", "invalid_json_schema")
    await expect400({ tools: [{ type: "function", function: { name: "bad name!" } }] }, "tools[0].function.name", "invalid_value")
    // The server keeps serving.
    const ok = await client.chat.completions.create({ model: tinyModelId, messages: [user("Hi")], max_tokens: 2 })
    expect(ok.choices).toHaveLength(1)
  })
})
