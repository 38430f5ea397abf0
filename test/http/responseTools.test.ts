import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"

// Tools on /v1/responses through the official `openai` client: function tools in the Responses shape, function_call
// output items, function_call / function_call_output input items, and the streamed function-call events.

/** Weft's `seed` extension, which the client's types do not know. */
const seeded = <A extends object>(params: A, seed: number) => ({ ...params, seed }) as A

const weatherTool: OpenAI.Responses.FunctionTool = {
  type: "function",
  name: "get_weather",
  description: "The weather forecast of a city",
  parameters: {
    type: "object",
    properties: { city: { type: "string", enum: ["Paris", "Oslo", "Lima"] }, days: { type: "integer" } },
    required: ["city", "days"],
    additionalProperties: false
  },
  strict: true
}

const expectWeatherArguments = (text: string) => {
  const args = JSON.parse(text) as Record<string, unknown>
  expect(Object.keys(args).sort()).toEqual(["city", "days"])
  expect(["Paris", "Oslo", "Lima"]).toContain(args["city"])
  expect(Number.isSafeInteger(args["days"])).toBe(true)
}

const functionCalls = (response: OpenAI.Responses.Response) =>
  response.output.filter((item): item is OpenAI.Responses.ResponseFunctionToolCall => item.type === "function_call")

describe("tools on the Responses API (tiny model)", () => {
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(tinyBackend({ parallel: 2, contextSize: 2048 }))
    client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
  })
  afterAll(() => server?.close())

  it("answers a forced call with a function_call item whose arguments parse and validate", async () => {
    const response = await client.responses.create(seeded({
      model: tinyModelId,
      input: "What is the weather in Paris?",
      tools: [weatherTool],
      tool_choice: { type: "function", name: "get_weather" },
      parallel_tool_calls: false,
      max_output_tokens: 200
    }, 1))
    expect(response.status).toBe("completed")
    expect(response.tools).toEqual([weatherTool])
    expect(response.tool_choice).toEqual({ type: "function", name: "get_weather" })
    expect(response.parallel_tool_calls).toBe(false)
    const calls = functionCalls(response)
    expect(response.output).toHaveLength(1)
    expect(calls).toHaveLength(1)
    expect(calls[0]).toMatchObject({ type: "function_call", name: "get_weather", status: "completed" })
    expect(calls[0]!.id).toMatch(/^fc_/)
    expect(calls[0]!.call_id).toMatch(/^call_/)
    expectWeatherArguments(calls[0]!.arguments)
    expect(response.output_text).toBe("")
  })

  it("round trip: call, then its output via previous_response_id, then a text answer; the chain's prefix is cached", async () => {
    const first = await client.responses.create(seeded({
      model: tinyModelId,
      input: "What is the weather in Oslo?",
      tools: [weatherTool],
      tool_choice: "required",
      parallel_tool_calls: false,
      max_output_tokens: 200
    }, 2))
    const [call] = functionCalls(first)
    expectWeatherArguments(call!.arguments)
    const second = await client.responses.create(seeded({
      model: tinyModelId,
      previous_response_id: first.id,
      input: [{ type: "function_call_output", call_id: call!.call_id, output: "{\"forecast\": \"sunny\"}" }],
      tools: [weatherTool],
      max_output_tokens: 8
    }, 2))
    // With `auto` the model may call again or answer; this seed answers in text (a random-weight model mostly does).
    expect(second.output.map((item) => item.type)).toEqual(["message"])
    expect(second.output_text.length).toBeGreaterThan(0)
    expect(second.usage!.input_tokens).toBeGreaterThan(first.usage!.input_tokens)
    // The stored conversation holds the call: it renders the first prompt again, so that prefix comes from the cache.
    expect(second.usage!.input_tokens_details.cached_tokens).toBeGreaterThanOrEqual(first.usage!.input_tokens)

    // The same turn sent statelessly, the call and its output as input items, renders the same prompt.
    const stateless = await client.responses.create(seeded({
      model: tinyModelId,
      input: [
        { role: "user", content: "What is the weather in Oslo?" },
        { type: "function_call", call_id: call!.call_id, name: call!.name, arguments: call!.arguments },
        { type: "function_call_output", call_id: call!.call_id, output: "{\"forecast\": \"sunny\"}" }
      ],
      tools: [weatherTool],
      max_output_tokens: 8,
      store: false
    }, 2))
    expect(stateless.usage!.input_tokens).toBe(second.usage!.input_tokens)
    expect(stateless.output_text).toBe(second.output_text)
  })

  it("streams a call as responses.stream() consumes it: item added, argument deltas, arguments done, item done", async () => {
    const stream = client.responses.stream(seeded({
      model: tinyModelId,
      input: "Weather in Lima?",
      tools: [weatherTool],
      tool_choice: "required" as const,
      parallel_tool_calls: false,
      max_output_tokens: 200
    }, 3))
    const events: Array<OpenAI.Responses.ResponseStreamEvent> = []
    for await (const event of stream) events.push(event)
    const final = await stream.finalResponse()
    expect(events.map((event) => event.sequence_number)).toEqual(events.map((_, index) => index))
    const types = events.map((event) => event.type).filter((type) => type !== "response.function_call_arguments.delta")
    expect(types).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.function_call_arguments.done",
      "response.output_item.done",
      "response.completed"
    ])
    const added = events.find((event) => event.type === "response.output_item.added")
    expect(added).toMatchObject({ output_index: 0, item: { type: "function_call", name: "get_weather", arguments: "", status: "in_progress" } })
    const deltas = events.flatMap((event) => (event.type === "response.function_call_arguments.delta" ? [event] : []))
    expect(deltas.length).toBeGreaterThan(1)
    const [call] = functionCalls(final)
    expect(deltas.every((delta) => delta.item_id === call!.id && delta.output_index === 0)).toBe(true)
    expect(deltas.map((delta) => delta.delta).join("")).toBe(call!.arguments)
    expectWeatherArguments(call!.arguments)
    expect(events.find((event) => event.type === "response.function_call_arguments.done")).toMatchObject({ arguments: call!.arguments })
    // The streamed response is stored with its call.
    const { parsed_arguments: _parsed, ...streamed } = call as typeof call & { parsed_arguments?: unknown }
    expect(functionCalls(await client.responses.retrieve(final.id))).toEqual([streamed])
  })

  it("answers bad tools with 400s naming the parameter in the Responses shape", async () => {
    const cases: ReadonlyArray<readonly [Record<string, unknown>, string]> = [
      [{ tools: [{ type: "web_search" }] }, "tools[0].type"],
      [{ tools: [{ ...weatherTool, parameters: { type: "object", properties: { x: { type: "string", pattern: "a+" } } } }] }, "tools[0].parameters.properties.x.pattern"],
      [{ tools: [{ ...weatherTool, parameters: { type: "string" } }] }, "tools[0].parameters.type"],
      [{ tools: [weatherTool], tool_choice: { type: "function", name: "nope" } }, "tool_choice"],
      [{ tool_choice: "required" }, "tool_choice"],
      [{ tools: [weatherTool], input: [{ type: "function_call", call_id: "c", name: "bad name!", arguments: "{}" }] }, "input[0].name"],
      // A result must answer a call of the conversation: one that answers none would be left out of the prompt.
      [{ input: [{ role: "user", content: "Hi" }, { type: "function_call_output", call_id: "call_nope", output: "x" }] }, "input[1].call_id"]
    ]
    for (const [fields, param] of cases) {
      const response = await postJson(server, "/v1/responses", { model: tinyModelId, input: "Hi", ...fields })
      expect(response.status, param).toBe(400)
      const { error } = (await response.json()) as { error: { param: string; message: string } }
      expect(error.param).toBe(param)
      expect(error.message).not.toContain(".function.")
    }
  })
})

describe("tools on the Responses API (SimBackend scripted calls)", () => {
  const output = [
    "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a } \\\" </tool_call>\"}}\n</tool_call>"
  ].join("\n")
  const tools = ["get_time", "get_weather"].map((name) => ({ type: "function" as const, name, parameters: { type: "object", properties: {} }, strict: false }))
  let server: TestServer
  let client: OpenAI

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 0, script: () => ({ text: output }) }))
    client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
  })
  afterAll(() => server?.close())

  it("gives parallel calls one function_call item each, streamed and not", async () => {
    const blocking = await client.responses.create({ model: "sim", input: "Hi", tools })
    expect(functionCalls(blocking).map((call) => [call.name, JSON.parse(call.arguments)])).toEqual([
      ["get_time", { zone: "UTC" }],
      ["get_weather", { city: "a } \" </tool_call>" }]
    ])
    expect(blocking.output).toHaveLength(2)

    const stream = client.responses.stream({ model: "sim", input: "Hi", tools })
    const added: Array<number> = []
    stream.on("response.output_item.added", (event) => added.push(event.output_index))
    const final = await stream.finalResponse()
    expect(added).toEqual([0, 1])
    expect(functionCalls(final).map((call) => [call.name, call.arguments])).toEqual(
      functionCalls(blocking).map((call) => [call.name, call.arguments])
    )
    expect(new Set(functionCalls(final).map((call) => call.call_id)).size).toBe(2)
  })

  it("with tool_choice none the tools are not offered and the output is plain text", async () => {
    const response = await client.responses.create({ model: "sim", input: "Hi", tools, tool_choice: "none" })
    expect(response.output.map((item) => item.type)).toEqual(["message"])
    expect(response.output_text).toBe(output)
  })
})
