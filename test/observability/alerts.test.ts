import { describe, expect, it } from "@effect/vitest"
import { FastCheck, Schema } from "effect"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { stepRule } from "../../src/observability/Alerts.js"
import type { AlertNotification, RuleState } from "../../src/observability/Alerts.js"
import { AlertSettings } from "../../src/observability/AlertRules.js"
import type { AlertRule } from "../../src/observability/AlertRules.js"
import { postJson, readAll, startServer } from "../support/testServer.js"

/** A local webhook receiver: every JSON body POSTed to it, in order. */
const webhookReceiver = async () => {
  const received: Array<AlertNotification> = []
  const server = http.createServer((request, response) => {
    let body = ""
    request.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")))
    request.on("end", () => {
      received.push(JSON.parse(body) as AlertNotification)
      response.writeHead(204).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/** A port nothing listens on: a webhook that always fails. */
const deadUrl = async () => {
  const server = http.createServer()
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return `http://127.0.0.1:${port}/hook`
}

const until = async (what: string, predicate: () => boolean | Promise<boolean>) => {
  for (let attempt = 0; attempt < 2000; attempt++) {
    if (await predicate()) return
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  throw new Error(`never: ${what}`)
}

const firingGauge = async (url: string, alert: string) => {
  const text = await (await fetch(`${url}/metrics`)).text()
  return Number(new RegExp(`^weft_alerts_firing\\{alert="${alert}"\\} (\\S+)$`, "m").exec(text)?.[1])
}

describe("alert rules", () => {
  it("a saturated queue fires once to the webhook and, after the load stops, resolves once; a dead webhook blocks nothing", async () => {
    const receiver = await webhookReceiver()
    const alerts = Schema.decodeUnknownSync(AlertSettings)({
      defaults: false,
      rules: [{ name: "QueueSaturated", metric: "queue_length", op: ">=", threshold: 2, for: "100ms", severity: "critical" }],
      webhooks: [await deadUrl(), receiver.url],
      evaluationInterval: "25ms"
    })
    const server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 512, tokenLatency: 10 }), {
      scheduler: { maxQueue: 2 },
      operations: { alerts }
    })
    try {
      // Not awaited: a queued stream's response starts only once it gets a slot.
      const streams = Promise.all(
        [1, 2, 3].map((n) =>
          postJson(server, "/v1/chat/completions", {
            model: "sim",
            messages: [{ role: "user", content: `load ${n}` }],
            max_tokens: 60,
            stream: true
          }))
      )
      await until("the alert fires", () => receiver.received.some((one) => one.status === "firing"))
      expect(await firingGauge(server.url, "QueueSaturated")).toBe(1)
      const listed = (await (await fetch(`${server.url}/admin/alerts`)).json()) as { data: Array<{ alert: string; status: string }> }
      expect(listed.data).toContainEqual(expect.objectContaining({ alert: "QueueSaturated", status: "firing" }))
      // The load ends: every stream runs to its end while the server keeps serving.
      const bodies = await Promise.all((await streams).map((response) => readAll(response.body!.getReader())))
      for (const body of bodies) expect(body).toContain("[DONE]")
      await until("the alert resolves", () => receiver.received.some((one) => one.status === "resolved"))
      expect(await firingGauge(server.url, "QueueSaturated")).toBe(0)
      // Many more evaluations: nothing is notified again.
      const health = await fetch(`${server.url}/health`)
      expect(health.status).toBe(200)
      await new Promise((resolve) => setTimeout(resolve, 300))
      expect(receiver.received.map((one) => one.status)).toEqual(["firing", "resolved"])
      const [firing, resolved] = receiver.received
      expect(firing).toMatchObject({ alert: "QueueSaturated", severity: "critical", metric: "queue_length", op: ">=", threshold: 2, repeat: false, endsAt: null })
      expect(firing!.value).toBeGreaterThanOrEqual(2)
      expect(resolved).toMatchObject({ alert: "QueueSaturated", status: "resolved", startsAt: firing!.startsAt })
      expect(Date.parse(resolved!.endsAt!)).toBeGreaterThanOrEqual(Date.parse(firing!.startsAt))
      const after = (await (await fetch(`${server.url}/admin/alerts`)).json()) as { data: Array<{ alert: string; status: string }> }
      expect(after.data).toEqual([expect.objectContaining({ alert: "QueueSaturated", status: "resolved" })])
    } finally {
      await server.close()
      await receiver.close()
    }
  })

  const rule: AlertRule = { name: "Rule", metric: "queue_length", op: ">", threshold: 0, for: 3, severity: "warning" }

  it.prop(
    "notifies firing and resolved alternately, firing only after the condition held for `for`, repeats only after the interval",
    [FastCheck.array(FastCheck.tuple(FastCheck.boolean(), FastCheck.integer({ min: 1, max: 5 })), { maxLength: 60 })],
    ([steps]) => {
      const repeatMs = 20
      let state: RuleState = { _tag: "Inactive" }
      let now = 0
      let heldSince: number | undefined
      let lastFiring: number | undefined
      const sent: Array<string> = []
      for (const [holds, gap] of steps) {
        now += gap
        heldSince = holds ? heldSince ?? now : undefined
        const { next, notify } = stepRule(rule, state, holds, now, repeatMs)
        if (notify?.status === "firing") {
          expect(now - heldSince!).toBeGreaterThanOrEqual(rule.for)
          if (notify.repeat) expect(now - lastFiring!).toBeGreaterThanOrEqual(repeatMs)
          lastFiring = now
          if (!notify.repeat) sent.push("firing")
        }
        if (notify?.status === "resolved") sent.push("resolved")
        state = next
      }
      sent.forEach((status, index) => expect(status).toBe(index % 2 === 0 ? "firing" : "resolved"))
    }
  )
})
