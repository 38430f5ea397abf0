import { execFile } from "node:child_process"
import * as path from "node:path"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"

const root = path.resolve(import.meta.dirname, "..")

/** Runs `npm run <script>` from the repository root, as a reader of the README would, and gives back what it printed. */
const runScript = async (script: string, env: Record<string, string> = {}) => {
  const { stdout } = await promisify(execFile)("npm", ["run", "-s", script], { cwd: root, env: { ...process.env, ...env }, timeout: 240_000 })
  return stdout
}

describe("examples/", () => {
  it("generate.ts: text, a stream, an object decoded with its schema, and a tool call with its result, on the demo model", async () => {
    const out = await runScript("example:generate")
    expect(out).toMatch(/^generateText: ".+" \(length, 24 tokens\)$/m)
    expect(out).toMatch(/^streamText: (.+\|){2,}$/m)
    const object = JSON.parse(/^generateObject: (.+)$/m.exec(out)![1]!) as Record<string, unknown>
    expect(["Paris", "Oslo", "Lima"]).toContain(object["city"])
    expect(typeof object["sunny"]).toBe("boolean")
    const zone = /^tool call: GetTime\(\{"zone":"(UTC|CET)"\}\)$/m.exec(out)![1]
    expect(out).toContain(`tool result: {"time":"12:00 ${zone}"}`)
    expect(out).toMatch(/^answer after the tool: ".*"$/m)
  }, 300_000)

  it("mount.ts: the app's own route and Weft's routes under /llm answer from one server", async () => {
    const out = await runScript("example:mount", { PORT: "0" })
    expect(out).toContain("GET /hello → hello from my app")
    expect(out).toMatch(/^GET \/llm\/v1\/models → \{"object":"list","data":\[\{"id":"demo"/m)
    expect(out).toMatch(/^POST \/llm\/v1\/chat\/completions → ".+"$/m)
  }, 300_000)
})
