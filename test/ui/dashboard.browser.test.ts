import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import { chromium } from "playwright-core"
import type { Browser, Page } from "playwright-core"
import { SimBackend } from "../../src/engine/SimBackend.js"
import { postJson, readAll, startServer } from "../support/testServer.js"
import type { TestServer } from "../support/testServer.js"
import { keyStoreIn } from "../support/keys.js"
import { tinyBackend } from "../support/tinyModel.js"

/** Debian's `chromium` package; `.ci/run` installs it. */
const chromiumPath = process.env["WEFT_CHROMIUM"] ?? "/usr/bin/chromium"
/** `WEFT_SCREENSHOTS=1` refreshes the README's screenshots under docs/. */
const screenshots = process.env["WEFT_SCREENSHOTS"] === "1"
const docs = path.join(import.meta.dirname, "..", "..", "docs")

const snap = async (page: Page, name: string) => {
  if (screenshots) await page.screenshot({ path: path.join(docs, name), fullPage: true })
}

/** What the page exposes of its chart.js charts. */
interface ChartsWindow {
  readonly weftCharts: Record<string, { readonly data: { readonly labels: Array<unknown>; readonly datasets: Array<{ readonly data: Array<number | null> }> } }>
}

const chartPoints = (page: Page, chart: "throughput" | "ttft" | "itl") =>
  page.evaluate((name) => (globalThis as unknown as ChartsWindow).weftCharts[name]!.data.labels.length, chart)

describe.skipIf(!fs.existsSync(chromiumPath))("the dashboard in headless Chromium", () => {
  let browser: Browser

  beforeAll(async () => {
    browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] })
  })
  afterAll(async () => {
    await browser?.close()
  })

  it("shows a slot running while a stream is in flight and idle after, and its charts receive points", async () => {
    const server = await startServer(SimBackend.layer({ parallel: 2, contextSize: 512, tokenLatency: 15 }), {
      operations: { liveEvents: { intervalMs: 100 } }
    })
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
    try {
      await page.goto(server.url)
      await page.locator("#connection.live").waitFor()
      await page.locator("#slots tr[data-slot='0'][data-state='idle']").waitFor()
      const response = await postJson(server, "/v1/chat/completions", {
        model: "sim",
        messages: [{ role: "user", content: "stream for a while" }],
        max_tokens: 200,
        stream: true
      })
      const body = readAll(response.body!.getReader())
      await page.locator("#slots tr[data-state='running']").waitFor()
      const running = page.locator("#slots tr[data-state='running'] td").nth(2)
      expect(await running.textContent()).toMatch(/\S/)
      await body
      await page.locator("#recent tr[data-status='completed']").waitFor()
      await page.locator("#slots tr[data-state='running']").waitFor({ state: "detached" })
      expect(await page.locator("#slots tr[data-state='idle']").count()).toBe(2)
      await page.waitForFunction(() => {
        const charts = (globalThis as unknown as ChartsWindow).weftCharts
        return charts["throughput"]!.data.datasets[0]!.data.some((value) => value !== null && value > 0) &&
          charts["ttft"]!.data.datasets[0]!.data.some((value) => value !== null)
      })
      expect(await chartPoints(page, "itl")).toBeGreaterThan(0)
      if (screenshots) {
        // A busier moment for the README: both slots running, one finished request listed.
        const streams = [1, 2].map(async () => {
          const more = await postJson(server, "/v1/chat/completions", { model: "sim", messages: [{ role: "user", content: "more" }], max_tokens: 150, stream: true })
          return readAll(more.body!.getReader())
        })
        await page.locator("#slots tr[data-state='running']").nth(1).waitFor()
        await new Promise((resolve) => setTimeout(resolve, 1000))
        await snap(page, "dashboard.png")
        await Promise.all(streams)
      }
    } finally {
      await page.close()
      await server.close()
    }
  })

  it("asks for a key when keys exist, and keeps it in the tab's sessionStorage only", async () => {
    const keys = keyStoreIn("weft-dashboard-keys-")
    const { key } = await keys.create("ops", { scopes: ["admin", "inference"] })
    const server = await startServer(SimBackend.layer({ parallel: 1, contextSize: 256, tokenLatency: 5 }), {
      keysDatabasePath: keys.databasePath,
      operations: { liveEvents: { intervalMs: 100 } }
    })
    const context = await browser.newContext()
    const page = await context.newPage()
    try {
      await page.goto(server.url)
      await page.locator("#key-form").waitFor()
      expect(await page.locator("#connection").textContent()).toBe("needs a key")
      await page.fill("#admin-key", "sk-wrong")
      await page.click("#key-form button[type='submit']")
      await page.locator("#key-form").waitFor()
      await page.fill("#admin-key", key)
      await page.click("#key-form button[type='submit']")
      await page.locator("#connection.live").waitFor()
      await page.locator("#slots tr[data-slot='0']").waitFor()
      expect(await page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]")).toEqual([1, 0, ""])
      // A new tab of the same browser starts without it.
      const other = await context.newPage()
      await other.goto(server.url)
      await other.locator("#key-form").waitFor()
      await other.close()
    } finally {
      await context.close()
      await server.close()
      await keys.close()
    }
  })

  describe("against the tiny model", () => {
    let server: TestServer
    beforeAll(async () => {
      server = await startServer(tinyBackend({ parallel: 2 }), { operations: { liveEvents: { intervalMs: 200 } } })
    })
    afterAll(async () => {
      await server?.close()
    })

    it("the playground streams a reply, with usage and timings", async () => {
      const page = await browser.newPage({ viewport: { width: 1280, height: 800 } })
      try {
        await page.goto(`${server.url}/ui`)
        await page.click("#tab-playground")
        await page.locator("#pg-model option").first().waitFor({ state: "attached" })
        await page.fill("#pg-system", "You are terse.")
        await page.fill("#pg-prompt", "Tell me a story.")
        await page.fill("#pg-max-tokens", "24")
        await page.fill("#pg-temperature", "0.8")
        await page.click("#pg-send")
        await page.locator("#pg-output[data-done='true']").waitFor()
        expect(await page.locator("#pg-error").isHidden()).toBe(true)
        expect((await page.locator("#pg-output").textContent())!.length).toBeGreaterThan(0)
        expect(await page.locator("#pg-usage").textContent()).toMatch(/\d+ prompt \+ \d+ completion = \d+ tokens/)
        expect(await page.locator("#pg-timings").textContent()).toMatch(/first token \d+ ms · total \d+ ms/)
        await snap(page, "playground.png")
      } finally {
        await page.close()
      }
    })
  })
})
