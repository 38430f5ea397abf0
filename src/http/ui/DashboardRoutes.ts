import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Stream } from "effect"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { LiveEvents } from "../../observability/LiveEvents.js"
import type { LiveEvent } from "../../observability/LiveEvents.js"
import { sseHeaders } from "../GenerationResponse.js"

/** The dashboard's files, read once: they ship with the source, so `npm ci && npm start` serves them with no build. */
const asset = (name: string) => fs.readFileSync(new URL(`./${name}`, import.meta.url), "utf8")
const page = asset("dashboard.html")
const script = asset("dashboard.js")
const style = asset("dashboard.css")
/** chart.js's UMD build, straight from node_modules (its package exports do not name it, so from the main entry's folder). */
const chartJs = fs.readFileSync(path.join(path.dirname(createRequire(import.meta.url).resolve("chart.js")), "chart.umd.js"), "utf8")

/** The page loads only its own scripts and styles, talks only to this server, and is never framed. */
const pageHeaders = {
  "cache-control": "no-cache",
  "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer"
}

const serve = (body: string, contentType: string) =>
  Effect.succeed(HttpServerResponse.text(body, { contentType, headers: pageHeaders }))

const frameOf = (event: LiveEvent): string => `event: ${event._tag}\ndata: ${JSON.stringify(event)}\n\n`

const draining = (event: LiveEvent) => event._tag === "snapshot" && event.sample.models.some((model) => model.state === "draining")

/**
 * `GET /admin/events`: the server's state as server-sent events, `history` (chart points of the last minutes) first,
 * then a `snapshot` per tick. It ends once the server drains, so an open dashboard never holds shutdown.
 */
const events = Effect.map(LiveEvents, (live) =>
  HttpServerResponse.stream(live.subscribe.pipe(Stream.takeUntil(draining), Stream.map(frameOf), Stream.encodeText), sseHeaders))

/** The dashboard (`/` and `/ui`), its assets, and the event stream it reads. */
export const dashboardRoutes = HttpRouter.empty.pipe(
  HttpRouter.get("/", serve(page, "text/html; charset=utf-8")),
  HttpRouter.get("/ui", serve(page, "text/html; charset=utf-8")),
  HttpRouter.get("/ui/dashboard.js", serve(script, "text/javascript; charset=utf-8")),
  HttpRouter.get("/ui/dashboard.css", serve(style, "text/css; charset=utf-8")),
  HttpRouter.get("/ui/chart.umd.js", serve(chartJs, "text/javascript; charset=utf-8")),
  HttpRouter.get("/admin/events", events)
)
