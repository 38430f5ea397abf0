import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { firstSseFrame, postJson, readAll, sseData, startServer } from "../support/testServer.js"
import { tinyModelId, tinyModelPath } from "../support/tinyModel.js"

const repoRoot = fileURLToPath(new URL("../..", import.meta.url))

const chat = (extra: Record<string, unknown>) => ({
  model: "sim",
  messages: [{ role: "user", content: "hi" }],
  ignore_eos: true,
  stream: true,
  ...extra
})

describe("graceful shutdown", () => {
  it("lets in-flight streams finish within the grace period, ends the rest with an error frame, and stops listening", async () => {
    const server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 10_000_000, tokenLatency: 10 }), {
      shutdownGraceMs: 2_000
    })
    const short = await firstSseFrame(await postJson(server, "/v1/chat/completions", chat({ max_tokens: 5 })))
    const endless = await firstSseFrame(await postJson(server, "/v1/chat/completions", chat({ max_tokens: 100_000_000 })))

    const closing = server.close()
    const [shortRest, endlessRest] = await Promise.all([readAll(short), readAll(endless)])
    await closing

    expect(sseData(shortRest).at(-1)).toBe("[DONE]")
    const last = JSON.parse(sseData(endlessRest).at(-1)!) as { readonly error: { readonly code: string } }
    expect(last.error.code).toBe("shutting_down")
    await expect(fetch(`${server.url}/health`)).rejects.toThrow()
  })

  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    it(`weft serve exits 0 on ${signal} while a stream is open`, async () => {
      const child = spawn(
        process.execPath,
        ["--import", "tsx", "src/main.ts", "serve", "--model", await tinyModelPath(), "--port", "0", "--threads", "2", "--gpu", "off", "--parallel", "2", "--ctx-size", "256", "--shutdown-grace", "5s"],
        { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] }
      )
      const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
      let output = ""
      const url = await new Promise<string>((resolve, reject) => {
        const onData = (data: Buffer) => {
          output += data.toString()
          const match = /Weft is serving "[^"]+" on (http:\/\/[\d.:]+)/.exec(output)
          if (match !== null) resolve(match[1]!)
        }
        child.stdout.on("data", onData)
        child.stderr.on("data", onData)
        void exited.then((code) => reject(new Error(`weft exited with ${code} before serving:\n${output}`)))
      })
      expect(output).toContain(`curl ${url}/v1/chat/completions`)

      const stream = await firstSseFrame(
        await postJson({ url }, "/v1/chat/completions", { ...chat({ max_tokens: 16 }), model: tinyModelId })
      )
      child.kill(signal)
      const rest = await readAll(stream)
      expect(await exited).toBe(0)
      const last = sseData(rest).at(-1)
      expect(last === "[DONE]" || last?.startsWith("{\"error\"")).toBe(true)
    })
  }
})
