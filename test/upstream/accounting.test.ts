import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SimBackend } from "../../src/engine/SimBackend.js"
import type { Principal } from "../../src/identity/Principal.js"
import { parsePrometheusText } from "../support/prometheusText.js"
import { postJson, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"

const principal: Principal = {
  keyId: "key_up",
  keyName: "up",
  tenant: "acme",
  scopes: ["inference", "admin"],
  keyLimits: { tpm: 1000 },
  tenantLimits: {}
}

const sim = () => SimBackend.layer({ parallel: 2, contextSize: 256, tokenLatency: 1 })

describe("an upstream's usage in Weft's own accounting", () => {
  let upstream: TestServer
  let front: TestServer
  let auditPath: string

  beforeAll(async () => {
    auditPath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "weft-upstream-audit-")), "audit.jsonl")
    upstream = await startServer(sim())
    front = await startServer(sim(), { principal, auditLogPath: auditPath, models: { remote: { deployments: [{ url: upstream.baseURL, model: "sim" }] } } })
  })
  afterAll(async () => {
    await front?.close()
    await upstream?.close()
  })

  it("charges the caller's token limit, the audit record and the token metrics with the upstream's usage", async () => {
    const response = await postJson(front, "/v1/chat/completions", { model: "remote", messages: [{ role: "user", content: "hi" }], max_tokens: 5 }, {
      headers: { "content-type": "application/json", "x-request-id": "acct-1" }
    })
    const body = await response.json() as { usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } }
    expect(response.headers.get("x-ratelimit-remaining-tokens")).toBe(String(1000 - body.usage.total_tokens))

    let record: { promptTokens?: number; completionTokens?: number; tenant?: string } | undefined
    for (let attempt = 0; attempt < 100 && record === undefined; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 20))
      const lines = fs.existsSync(auditPath) ? fs.readFileSync(auditPath, "utf8").split("\n").filter((line) => line !== "") : []
      record = lines.map((line) => JSON.parse(line) as { requestId: string; promptTokens?: number; completionTokens?: number; tenant?: string }).find((line) => line.requestId === "acct-1")
    }
    expect(record).toMatchObject({ tenant: "acme", promptTokens: body.usage.prompt_tokens, completionTokens: body.usage.completion_tokens })

    const families = parsePrometheusText(await (await fetch(`${front.url}/metrics`)).text())
    const generated = families.get("weft_generation_tokens_total")!.samples.find((sample) => sample.labels["model"] === "remote" && sample.labels["tenant"] === "acme")
    expect(generated?.value).toBe(body.usage.completion_tokens)
  })
})
