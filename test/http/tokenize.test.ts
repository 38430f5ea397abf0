import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { tinyBackend, tinyModelId } from "../support/tinyModel.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

interface ErrorBody {
  readonly error: { readonly param: string | null; readonly code: string | null; readonly type: string }
}

describe("/tokenize and /detokenize against the tiny model", () => {
  let server: TestServer

  const call = async <A>(path: string, body: unknown): Promise<{ status: number; body: A }> => {
    const response = await postJson(server, path, body)
    return { status: response.status, body: (await response.json()) as A }
  }
  const tokenize = async (body: Record<string, unknown>) => {
    const answer = await call<{ tokens: Array<number> }>("/tokenize", body)
    expect(answer.status).toBe(200)
    return answer.body.tokens
  }
  const detokenize = async (tokens: ReadonlyArray<number>) => {
    const answer = await call<{ content: string }>("/detokenize", { tokens })
    expect(answer.status).toBe(200)
    return answer.body.content
  }

  beforeAll(async () => {
    server = await startServer(tinyBackend())
  })
  afterAll(() => server?.close())

  it("round-trips text through /tokenize and /detokenize", async () => {
    for (const content of ["hello world", "  leading spaces and ünïcödé, 日本語 🙂", "line\nbreaks\n\n"]) {
      const tokens = await tokenize({ content })
      expect(tokens.length).toBeGreaterThan(0)
      expect(tokens.every((token) => Number.isInteger(token))).toBe(true)
      expect(await detokenize(tokens)).toBe(content)
    }
    expect(await tokenize({ content: "" })).toEqual([])
  })

  it("answers { id, piece } per token with with_pieces, the pieces spelling the text", async () => {
    const tokens = await tokenize({ content: "hello world" })
    const answer = await call<{ tokens: Array<{ id: number; piece: string }> }>("/tokenize", { content: "hello world", with_pieces: true })
    expect(answer.body.tokens.map((piece) => piece.id)).toEqual(tokens)
    expect(answer.body.tokens.map((piece) => piece.piece).join("")).toBe("hello world")
  })

  it("parses special-token text by default, and as plain text with parse_special: false", async () => {
    const special = await tokenize({ content: "<|im_start|>" })
    expect(special).toHaveLength(1)
    const plain = await tokenize({ content: "<|im_start|>", parse_special: false })
    expect(plain.length).toBeGreaterThan(1)
    expect(plain).not.toContain(special[0])
    expect(await detokenize(special)).toBe("<|im_start|>")
    expect(await detokenize(plain)).toBe("<|im_start|>")
  })

  it("puts the model's BOS first with add_special when the model uses one", async () => {
    const info = server.engine.backend.info
    const tokens = await tokenize({ content: "hi", add_special: true })
    const without = await tokenize({ content: "hi" })
    expect(tokens).toEqual(info.addBosToken && info.bosToken !== undefined ? [info.bosToken, ...without] : without)
  })

  it("selects the model by `model`; refuses an unknown one, bad ids and a missing content with OpenAI's envelope", async () => {
    expect((await call<{ tokens: Array<number> }>("/tokenize", { content: "x", model: tinyModelId })).status).toBe(200)
    const unknown = await call<ErrorBody>("/tokenize", { content: "x", model: "nope" })
    expect({ status: unknown.status, param: unknown.body.error.param }).toEqual({ status: 404, param: "model" })
    const vocabSize = server.engine.backend.info.vocabSize
    for (const tokens of [[1, vocabSize], [-1], [1.5]]) {
      const bad = await call<ErrorBody>("/detokenize", { tokens })
      expect(bad.status).toBe(400)
      expect(bad.body.error.param).toMatch(/^tokens/)
    }
    const missing = await call<ErrorBody>("/tokenize", {})
    expect({ status: missing.status, param: missing.body.error.param, code: missing.body.error.code }).toEqual({
      status: 400,
      param: "content",
      code: "missing_required_parameter"
    })
    // GET is not routed there: 405 with Allow.
    const wrongMethod = await fetch(`${server.url}/tokenize`)
    expect(wrongMethod.status).toBe(405)
    expect(wrongMethod.headers.get("allow")).toContain("POST")
  })
})
