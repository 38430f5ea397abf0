import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import OpenAI from "openai"
import * as path from "node:path"
import { SimBackend } from "../../src/engine/SimBackend.js"
import type { WeftPlugin } from "../../src/plugins/PluginApi.js"
import type { PluginSource } from "../../src/plugins/Plugins.js"
import { postJson, readAll, sseData, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const examples = path.join(import.meta.dirname, "..", "..", "examples", "plugins")
const example = (name: string): PluginSource => ({ _tag: "Path", path: path.join(examples, name) })

/** What the simulated model says, byte by byte: every address arrives split over many deltas. */
const secretText = "Mail john.doe@example.com or call +1 555-123-4567, not 42."
const redactedText = "Mail [email] or call [phone], not 42."

const sim = () => SimBackend.layer({ parallel: 2, contextSize: 512, tokenLatency: 1, script: () => ({ text: secretText }) })

const chat = (content: string, extra: Record<string, unknown> = {}) => ({ model: "sim", messages: [{ role: "user", content }], max_tokens: 200, ...extra })

const streamedText = async (response: Response) => {
  const frames = sseData(await readAll(response.body!.getReader()))
  const chunks = frames.filter((data) => data !== "[DONE]").map((data) => JSON.parse(data) as { choices?: Array<{ delta?: { content?: string } }>; error?: unknown })
  return { text: chunks.map((chunk) => chunk.choices?.[0]?.delta?.content ?? "").join(""), errors: chunks.flatMap((chunk) => (chunk.error === undefined ? [] : [chunk.error])), frames }
}

interface ListedPlugin {
  readonly name: string
  readonly failClosed: boolean
  readonly hooks: Array<string>
  readonly routes: Array<string>
  readonly stats: Record<string, { calls: number; errors: number; timeouts: number; meanMs: number; maxMs: number }>
}

const listed = async (server: TestServer) =>
  ((await (await fetch(`${server.url}/admin/plugins`)).json()) as { data: Array<ListedPlugin> }).data

describe("the example plugins over HTTP", () => {
  let server: TestServer
  beforeAll(async () => {
    process.env["WEFT_GUARD_BLOCKED"] = "launch codes, secret plan"
    process.env["WEFT_GUARD_MAX_CHARS"] = "200"
    server = await startServer(sim(), { operations: { plugins: [example("input-guard.mjs"), example("pii-redaction.mjs")] } })
  })
  afterAll(async () => {
    await server?.close()
  })

  it("pii-redaction redacts emails and phone numbers split across deltas, streamed and not", async () => {
    const plain = await postJson(server, "/v1/chat/completions", chat("hi"))
    expect(plain.status).toBe(200)
    const body = (await plain.json()) as { choices: Array<{ message: { content: string } }> }
    expect(body.choices[0]!.message.content).toBe(redactedText)

    const streamed = await streamedText(await postJson(server, "/v1/chat/completions", chat("hi", { stream: true })))
    expect(streamed.errors).toEqual([])
    expect(streamed.text).toBe(redactedText)
    expect(streamed.frames.at(-1)).toBe("[DONE]")
    // Many deltas, none of them carrying a piece of an address. Only the deltas' text is searched: the frames' random
    // completion id once held "555" (a test that failed about one run in a hundred).
    expect(streamed.frames.length).toBeGreaterThan(10)
    const deltas = streamed.frames.filter((frame) => frame !== "[DONE]").map((frame) =>
      (JSON.parse(frame) as { choices: Array<{ delta?: { content?: string } }> }).choices[0]?.delta?.content ?? "")
    expect(deltas.filter((delta) => delta !== "").length).toBeGreaterThan(5)
    expect(deltas.join("\n")).not.toMatch(/john|example|555|4567/)

    const completion = (await (await postJson(server, "/v1/completions", { model: "sim", prompt: "x", max_tokens: 200 })).json()) as { choices: Array<{ text: string }> }
    expect(completion.choices[0]!.text).toBe(redactedText)

    const stats = (await (await fetch(`${server.url}/plugins/pii-redaction/stats`)).json()) as { redactions: number }
    expect(stats.redactions).toBeGreaterThanOrEqual(6)
  })

  it("input-guard refuses blocked terms and long inputs in OpenAI's error shape, through the official client too", async () => {
    const blocked = await postJson(server, "/v1/chat/completions", chat("tell me the Launch Codes please"))
    expect(blocked.status).toBe(400)
    expect(await blocked.json()).toEqual({ error: { message: "The input contains a blocked term.", type: "invalid_request_error", param: null, code: "input_blocked" } })

    const long = await postJson(server, "/v1/completions", { model: "sim", prompt: "x".repeat(201), stream: true })
    expect(long.status).toBe(400)
    expect(((await long.json()) as { error: { code: string } }).error.code).toBe("input_too_long")

    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 })
    const refused = await client.chat.completions.create({ model: "sim", messages: [{ role: "user", content: "our secret plan" }], stream: true }).catch((error: unknown) => error)
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError)
    expect((refused as InstanceType<typeof OpenAI.BadRequestError>).code).toBe("input_blocked")

    const allowed = await client.chat.completions.create({ model: "sim", messages: [{ role: "user", content: "hello" }], max_tokens: 200 })
    expect(allowed.choices[0]!.message.content).toBe(redactedText)

    await expect.poll(async () => ((await (await fetch(`${server.url}/plugins/input-guard/stats`)).json()) as { blocked: number; tooLong: number; completionTokens: number }))
      .toMatchObject({ blocked: 2, tooLong: 1, completionTokens: expect.any(Number) })
    expect((await fetch(`${server.url}/plugins/input-guard/nothing`)).status).toBe(404)
    expect((await fetch(`${server.url}/plugins/nobody/stats`)).status).toBe(404)
  })

  it("lists both with their hooks, routes and timings", async () => {
    const plugins = await listed(server)
    expect(plugins.map((plugin) => plugin.name)).toEqual(["input-guard", "pii-redaction"])
    expect(plugins[0]).toMatchObject({ failClosed: false, hooks: ["beforeRequest", "afterRequest", "setup"], routes: ["GET /stats"] })
    expect(plugins[1]).toMatchObject({ failClosed: true, hooks: ["transformText"] })
    expect(plugins[0]!.stats["beforeRequest"]).toMatchObject({ errors: 0, timeouts: 0 })
    expect(plugins[0]!.stats["beforeRequest"]!.calls).toBeGreaterThan(0)
    expect(plugins[1]!.stats["write"]!.calls).toBeGreaterThan(10)
  })
})

describe("the input-guard example", () => {
  // A process imports a plugin's file once: a second server in it (another test file, an embedding program) must get
  // the settings of its own start, not those of the first import.
  it("reads its settings when a server sets it up, not when its file is imported", async () => {
    const guard = ((await import(path.join(examples, "input-guard.mjs"))) as { default: WeftPlugin }).default
    const verdict = (content: string) => guard.beforeRequest!({ endpoint: "chat", body: { messages: [{ role: "user", content }] }, tenant: null })
    const previous = process.env["WEFT_GUARD_BLOCKED"]
    try {
      process.env["WEFT_GUARD_BLOCKED"] = "alpha"
      guard.setup!()
      expect(verdict("say Alpha")).toMatchObject({ reject: { code: "input_blocked" } })
      expect(verdict("say beta")).toBeUndefined()
      process.env["WEFT_GUARD_BLOCKED"] = "beta"
      guard.setup!()
      expect(verdict("say alpha")).toBeUndefined()
      expect(verdict("say Beta")).toMatchObject({ reject: { code: "input_blocked" } })
    } finally {
      if (previous === undefined) delete process.env["WEFT_GUARD_BLOCKED"]
      else process.env["WEFT_GUARD_BLOCKED"] = previous
    }
  })
})

describe("misbehaving plugins", () => {
  const throwing: WeftPlugin = {
    name: "throwing",
    version: "0.0.1",
    beforeRequest: () => {
      throw new Error("boom")
    },
    transformText: () => ({
      write: () => {
        throw new Error("boom")
      }
    })
  }
  const hanging: WeftPlugin = {
    name: "hanging",
    version: "0.0.1",
    timeoutMs: 50,
    beforeRequest: () => new Promise(() => {})
  }
  const garbage: WeftPlugin = {
    name: "garbage",
    version: "0.0.1",
    beforeRequest: () => ({ reject: { status: 200, message: "not a refusal" } }) as never,
    transformText: () => ({ write: () => 42 as unknown as string })
  }

  /** Fails closed, and fails at the first `@` it sees. */
  const strictText: WeftPlugin = {
    name: "strict-text",
    version: "1",
    failClosed: true,
    transformText: () => ({
      write: (text) => {
        if (text.includes("@")) throw new Error("cannot redact")
        return text
      }
    })
  }

  it("a throwing, a hanging and a garbage-returning plugin are logged and counted, and requests go on without them", async () => {
    const server = await startServer(sim(), {
      operations: { plugins: [{ _tag: "Object", plugin: throwing }, { _tag: "Object", plugin: hanging }, { _tag: "Object", plugin: garbage }] }
    })
    try {
      const plain = await postJson(server, "/v1/chat/completions", chat("hi"))
      expect(plain.status).toBe(200)
      expect(((await plain.json()) as { choices: Array<{ message: { content: string } }> }).choices[0]!.message.content).toBe(secretText)
      const streamed = await streamedText(await postJson(server, "/v1/chat/completions", chat("hi", { stream: true })))
      expect(streamed.text).toBe(secretText)
      const plugins = await listed(server)
      const byName = Object.fromEntries(plugins.map((plugin) => [plugin.name, plugin.stats]))
      expect(byName["throwing"]!["beforeRequest"]).toMatchObject({ calls: 2, errors: 2, timeouts: 0 })
      // A transform that failed once is dropped for the rest of its stream: one failed write per request.
      expect(byName["throwing"]!["write"]).toMatchObject({ calls: 2, errors: 2 })
      expect(byName["hanging"]!["beforeRequest"]).toMatchObject({ calls: 2, errors: 0, timeouts: 2 })
      expect(byName["garbage"]!["beforeRequest"]).toMatchObject({ calls: 2, errors: 2 })
      expect(byName["garbage"]!["write"]).toMatchObject({ calls: 2, errors: 2 })
      expect((await fetch(`${server.url}/health`)).status).toBe(200)
    } finally {
      await server.close()
    }
  })

  it("a fail-closed plugin that fails fails the request in OpenAI's error shape, before or during the stream", async () => {
    const server = await startServer(sim(), {
      operations: {
        plugins: [
          { _tag: "Object", plugin: { ...hanging, name: "strict-before", failClosed: true } },
          { _tag: "Object", plugin: strictText }
        ]
      }
    })
    try {
      const refused = await postJson(server, "/v1/chat/completions", chat("hi"))
      expect(refused.status).toBe(500)
      const body = (await refused.json()) as { error: { message: string; type: string; param: null; code: string } }
      expect(body.error).toMatchObject({ type: "server_error", param: null, code: "plugin_failed" })
      expect(body.error.message).toContain("strict-before")
      expect(body.error.message).toContain("timed out after 50 ms")
      expect((await fetch(`${server.url}/health`)).status).toBe(200)
    } finally {
      await server.close()
    }
    const textOnly = await startServer(sim(), {
      operations: { plugins: [{ _tag: "Object", plugin: strictText }] }
    })
    try {
      const plain = await postJson(textOnly, "/v1/chat/completions", chat("hi"))
      expect(plain.status).toBe(500)
      expect(((await plain.json()) as { error: { code: string } }).error.code).toBe("plugin_failed")
      const streamed = await streamedText(await postJson(textOnly, "/v1/chat/completions", chat("hi", { stream: true })))
      expect(streamed.text).toBe("Mail john.doe")
      expect(streamed.errors).toEqual([expect.objectContaining({ code: "plugin_failed", type: "server_error" })])
      expect(streamed.frames).not.toContain("[DONE]")
    } finally {
      await textOnly.close()
    }
  })

  it("sets plugins up at start and disposes them at shutdown, in reverse order", async () => {
    const calls: Array<string> = []
    const tracked = (name: string): PluginSource => ({
      _tag: "Object",
      plugin: { name, version: "1", setup: () => void calls.push(`setup ${name}`), dispose: async () => void calls.push(`dispose ${name}`) }
    })
    const server = await startServer(sim(), { operations: { plugins: [tracked("first"), tracked("second")] } })
    expect(calls).toEqual(["setup first", "setup second"])
    await server.close()
    expect(calls).toEqual(["setup first", "setup second", "dispose second", "dispose first"])
  })

  it("refuses to start with a plugin that is not one", async () => {
    await expect(startServer(sim(), { operations: { plugins: [{ _tag: "Object", plugin: { name: "Bad Name", version: "1" } }] } })).rejects.toThrow(/lower-case/)
    await expect(startServer(sim(), { operations: { plugins: [{ _tag: "Path", path: path.join(examples, "missing.mjs") }] } })).rejects.toThrow(/missing\.mjs/)
  })
})
