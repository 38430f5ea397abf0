import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { FastCheck } from "effect"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { findBadText } from "../../src/http/TextHygiene.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

const chat = (extra: Record<string, unknown> = {}) => ({
  model: "sim",
  messages: [{ role: "user", content: "Hello" }],
  max_tokens: 2,
  ...extra
})

describe("text hygiene", () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 4096, tokenLatency: 1 }))
  })
  afterAll(() => server?.close())

  const refused = async (body: unknown, path = "/v1/chat/completions") => {
    const response = await postJson(server, path, body)
    expect(response.status).toBe(400)
    const { error } = (await response.json()) as ErrorBody
    expect(error.code).toBe("invalid_text")
    expect(error.type).toBe("invalid_request_error")
    return error
  }

  it("refuses NUL characters and lone surrogates in any text field with a 400 naming it", async () => {
    expect((await refused(chat({ messages: [{ role: "user", content: "a\u0000b" }] }))).param).toBe("messages[0].content")
    expect((await refused(chat({ messages: [{ role: "user", content: [{ type: "text", text: "x\ud800y" }] }] }))).param)
      .toBe("messages[0].content[0].text")
    expect((await refused(chat({ stop: ["ok", "\udc00"] }))).param).toBe("stop[1]")
    expect((await refused(chat({ session_id: "s\u0000" }))).param).toBe("session_id")
    expect((await refused(chat({ cache_salt: "\u0000tenant" }))).param).toBe("cache_salt")
    expect((await refused({ model: "sim", prompt: "\ud83d", max_tokens: 1 }, "/v1/completions")).param).toBe("prompt")
    expect((await refused({ model: "sim", prompt: "x", max_tokens: 1, "bad\u0000key": 1 }, "/v1/completions")).param).toBe(null)
    // The server keeps serving, and a well-formed pair (an emoji) is fine.
    const fine = await postJson(server, "/v1/chat/completions", chat({ messages: [{ role: "user", content: "ok \ud83d\ude00" }] }))
    expect(fine.status).toBe(200)
  })

  it("finds exactly the strings that hold a NUL or a lone surrogate (property)", () => {
    /** An independent oracle: `encodeURIComponent` throws on a lone surrogate. */
    const isBad = (text: string) => {
      if (text.includes("\u0000")) return true
      try {
        encodeURIComponent(text)
        return false
      } catch {
        return true
      }
    }
    FastCheck.assert(
      FastCheck.property(FastCheck.json(), FastCheck.string({ unit: "binary" }), (json, text) => {
        const value: unknown = JSON.parse(json)
        expect(findBadText(value)).toBeUndefined()
        const found = findBadText({ wrapped: [value, text] })
        expect(found !== undefined).toBe(isBad(text))
        if (found !== undefined) expect(found.param).toBe("wrapped[1]")
      })
    )
  })
})
