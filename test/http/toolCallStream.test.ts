import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postJson, sseData, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

/** What the simulated model "generates" for every prompt: two Hermes-style calls, the second's arguments tricky. */
const output = [
  "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>",
  "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a } \\\" </tool_call>\", \"days\": [1, 2]}}\n</tool_call>"
].join("\n")

const tools = ["get_time", "get_weather"].map((name) => ({
  type: "function",
  function: { name, parameters: { type: "object", properties: {} } }
}))

describe("streamed tool calls (SimBackend scripted output)", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 0, script: () => ({ text: output }) }))
  })
  afterAll(() => server?.close())

  it("sends each call's index, id, type and name first, then only argument fragments, then finish_reason tool_calls", async () => {
    const response = await postJson(server, "/v1/chat/completions", {
      model: "sim",
      messages: [{ role: "user", content: "Hi" }],
      tools,
      tool_choice: "required",
      stream: true
    })
    expect(response.status).toBe(200)
    const frames = sseData(await response.text())
    expect(frames[frames.length - 1]).toBe("[DONE]")
    const chunks = frames.slice(0, -1).map((frame) => JSON.parse(frame) as OpenAI.ChatCompletionChunk)
    const deltas = chunks.map((chunk) => chunk.choices[0]!.delta)
    expect(deltas[0]).toEqual({ role: "assistant", content: "" })
    expect(deltas.some((delta) => (delta.content ?? "") !== "")).toBe(false)
    const toolDeltas = deltas.flatMap((delta) => delta.tool_calls ?? [])
    const starts = toolDeltas.filter((delta) => delta.id !== undefined)
    expect(starts).toEqual([
      { index: 0, id: expect.stringMatching(/^call_/), type: "function", function: { name: "get_time", arguments: "" } },
      { index: 1, id: expect.stringMatching(/^call_/), type: "function", function: { name: "get_weather", arguments: "" } }
    ])
    for (const delta of toolDeltas.filter((delta) => delta.id === undefined)) {
      expect(Object.keys(delta).sort()).toEqual(["function", "index"])
      expect(Object.keys(delta.function!)).toEqual(["arguments"])
    }
    const argumentsOf = (index: number) =>
      toolDeltas.filter((delta) => delta.index === index).map((delta) => delta.function!.arguments).join("")
    expect(JSON.parse(argumentsOf(0))).toEqual({ zone: "UTC" })
    expect(JSON.parse(argumentsOf(1))).toEqual({ city: "a } \" </tool_call>", days: [1, 2] })
    const last = chunks[chunks.length - 1]!.choices[0]!
    expect(last.finish_reason).toBe("tool_calls")
    expect(last.delta).toEqual({})
  })

  it("answers the same calls in one body without streaming, content null", async () => {
    const client = new OpenAI({ baseURL: server.baseURL, apiKey: "unused", maxRetries: 0 })
    const completion = await client.chat.completions.create({
      model: "sim",
      messages: [{ role: "user", content: "Hi" }],
      tools: tools as Array<OpenAI.ChatCompletionTool>
    })
    const message = completion.choices[0]!.message
    expect(completion.choices[0]!.finish_reason).toBe("tool_calls")
    expect(message.content).toBeNull()
    expect(message.tool_calls!.map((call) => (call as OpenAI.ChatCompletionMessageFunctionToolCall).function)).toEqual([
      { name: "get_time", arguments: "{\"zone\": \"UTC\"}" },
      { name: "get_weather", arguments: "{\"city\": \"a } \\\" </tool_call>\", \"days\": [1, 2]}" }
    ])
  })

  it("without tools, the same output is plain text", async () => {
    const response = await postJson(server, "/v1/chat/completions", { model: "sim", messages: [{ role: "user", content: "Hi" }] })
    const body = (await response.json()) as OpenAI.ChatCompletion
    expect(body.choices[0]!.message.content).toBe(output)
    expect(body.choices[0]!.finish_reason).toBe("stop")
  })

  it("with n: 3, parses each choice on its own: every choice has both calls, streamed under its own index", async () => {
    const response = await postJson(server, "/v1/chat/completions", {
      model: "sim",
      messages: [{ role: "user", content: "Hi" }],
      tools,
      tool_choice: "required",
      n: 3,
      stream: true
    })
    expect(response.status).toBe(200)
    const frames = sseData(await response.text())
    expect(frames[frames.length - 1]).toBe("[DONE]")
    const chunks = frames.slice(0, -1).map((frame) => JSON.parse(frame) as OpenAI.ChatCompletionChunk)
    for (const index of [0, 1, 2]) {
      const choices = chunks.flatMap((chunk) => chunk.choices.filter((choice) => choice.index === index))
      expect(choices.some((choice) => (choice.delta.content ?? "") !== "")).toBe(false)
      const toolDeltas = choices.flatMap((choice) => choice.delta.tool_calls ?? [])
      expect(toolDeltas.filter((delta) => delta.id !== undefined).map((delta) => [delta.index, delta.function!.name])).toEqual([
        [0, "get_time"],
        [1, "get_weather"]
      ])
      const argumentsOf = (call: number) =>
        toolDeltas.filter((delta) => delta.index === call).map((delta) => delta.function!.arguments).join("")
      expect(JSON.parse(argumentsOf(0))).toEqual({ zone: "UTC" })
      expect(JSON.parse(argumentsOf(1))).toEqual({ city: "a } \" </tool_call>", days: [1, 2] })
      expect(choices.filter((choice) => choice.finish_reason !== null).map((choice) => choice.finish_reason)).toEqual(["tool_calls"])
    }

    const blocking = await postJson(server, "/v1/chat/completions", {
      model: "sim",
      messages: [{ role: "user", content: "Hi" }],
      tools,
      n: 2
    })
    const body = (await blocking.json()) as OpenAI.ChatCompletion
    expect(body.choices.map((choice) => [choice.index, choice.finish_reason, choice.message.content])).toEqual([
      [0, "tool_calls", null],
      [1, "tool_calls", null]
    ])
    for (const choice of body.choices) {
      expect(choice.message.tool_calls!.map((call) => (call as OpenAI.ChatCompletionMessageFunctionToolCall).function.name))
        .toEqual(["get_time", "get_weather"])
    }
    const ids = body.choices.flatMap((choice) => choice.message.tool_calls!.map((call) => call.id))
    expect(new Set(ids).size).toBe(4)
  })

  it("answers 400 naming ignore_eos, or logprobs, combined with tools; with tool_choice none both are allowed", async () => {
    for (const [param, extra] of [["ignore_eos", { ignore_eos: true }], ["logprobs", { logprobs: true }]] as const) {
      const refused = await postJson(server, "/v1/chat/completions", {
        model: "sim",
        messages: [{ role: "user", content: "Hi" }],
        tools,
        ...extra
      })
      expect(refused.status).toBe(400)
      expect(((await refused.json()) as { error: { param: string } }).error.param).toBe(param)
      const allowed = await postJson(server, "/v1/chat/completions", {
        model: "sim",
        messages: [{ role: "user", content: "Hi" }],
        tools,
        tool_choice: "none",
        max_tokens: 4,
        ...extra
      })
      expect(allowed.status).toBe(200)
    }
  })

  it("answers 400 naming the tool message whose tool_call_id answers no earlier call (it would be left out of the prompt)", async () => {
    const call = { id: "call_1", type: "function", function: { name: "get_time", arguments: "{}" } }
    const cases = [
      [[{ role: "user", content: "Hi" }, { role: "tool", tool_call_id: "call_1", content: "42" }], "messages[1].tool_call_id"],
      [[{ role: "assistant", content: null, tool_calls: [call] }, { role: "tool", tool_call_id: "call_2", content: "42" }], "messages[1].tool_call_id"],
      [[{ role: "tool", tool_call_id: "call_1", content: "42" }, { role: "assistant", content: null, tool_calls: [call] }], "messages[0].tool_call_id"]
    ] as const
    for (const [messages, param] of cases) {
      const response = await postJson(server, "/v1/chat/completions", { model: "sim", messages, tools })
      expect(response.status).toBe(400)
      expect(((await response.json()) as { error: { param: string } }).error.param).toBe(param)
    }
    const answered = await postJson(server, "/v1/chat/completions", {
      model: "sim",
      messages: [{ role: "assistant", content: null, tool_calls: [call] }, { role: "tool", tool_call_id: "call_1", content: "42" }],
      tools,
      tool_choice: "none",
      max_tokens: 2
    })
    expect(answered.status).toBe(200)
  })

  it("refuses tools in a server-kept session with a 400, and keeps serving", async () => {
    const response = await postJson(server, "/v1/chat/completions", {
      model: "sim",
      session_id: "s1",
      messages: [{ role: "tool", tool_call_id: "call_1", content: "42" }]
    })
    expect(response.status).toBe(400)
    expect(((await response.json()) as { error: { param: string } }).error.param).toBe("tools")
    const ok = await postJson(server, "/v1/chat/completions", { model: "sim", messages: [{ role: "user", content: "Hi" }] })
    expect(ok.status).toBe(200)
  })
})
