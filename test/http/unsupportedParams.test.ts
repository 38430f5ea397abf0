import * as fs from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { unsupportedParams } from "../../src/http/OpenAiRequests.js"
import type { OpenAiEndpoint } from "../../src/http/OpenAiRequests.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

// Finding 6: a known OpenAI parameter the server does not implement gets a 400 naming it, on every endpoint it
// applies to; its unset values (null, defaults) and unknown fields stay accepted.

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

const endpoints: Record<OpenAiEndpoint, { readonly path: string; readonly body: Record<string, unknown> }> = {
  chat: { path: "/v1/chat/completions", body: { model: "sim", messages: [{ role: "user", content: "Hello" }], max_tokens: 2 } },
  completions: { path: "/v1/completions", body: { model: "sim", prompt: "Hello", max_tokens: 2 } },
  responses: { path: "/v1/responses", body: { model: "sim", input: "Hello", max_output_tokens: 2 } }
}

const cases = unsupportedParams.flatMap((entry) => entry.endpoints.map((endpoint) => [entry.param, endpoint, entry.example] as const))

describe("unsupported OpenAI parameters", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 4096, tokenLatency: 1 }))
  })
  afterAll(() => server?.close())

  it.each(cases)("%s on %s gets a 400 naming it", async (param, endpoint, example) => {
    const { path, body } = endpoints[endpoint]
    const response = await postJson(server, path, { ...body, [param]: example })
    expect(response.status).toBe(400)
    const { error } = (await response.json()) as ErrorBody
    expect(error).toMatchObject({ param, code: "unsupported_parameter", type: "invalid_request_error" })
    expect(error.message).toContain(`'${param}' is not supported by this server`)
  })

  it.each(Object.keys(endpoints) as Array<OpenAiEndpoint>)("%s accepts every such parameter unset (null) and unknown fields", async (endpoint) => {
    const { path, body } = endpoints[endpoint]
    const nulls = Object.fromEntries(unsupportedParams.filter((entry) => entry.endpoints.includes(endpoint)).map((entry) => [entry.param, null]))
    const response = await postJson(server, path, { ...body, ...nulls, some_future_field: { a: 1 } })
    expect(response.status).toBe(200)
  })

  it("accepts the default values of parameters it does not implement", async () => {
    const chat = await postJson(server, endpoints.chat.path, { ...endpoints.chat.body, service_tier: "auto", store: false, modalities: ["text"], logit_bias: {} })
    expect(chat.status).toBe(200)
    const completion = await postJson(server, endpoints.completions.path, { ...endpoints.completions.body, best_of: 1, echo: false, suffix: "" })
    expect(completion.status).toBe(200)
  })

  it("the README lists every unsupported parameter", () => {
    const readme = fs.readFileSync(new URL("../../README.md", import.meta.url), "utf8")
    const section = readme.slice(readme.indexOf("### Unsupported parameters"))
    for (const entry of unsupportedParams) expect(section).toContain(`\`${entry.param}\``)
  })
})
