import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import { Alerts } from "../observability/Alerts.js"

/** `GET /admin/alerts`: pending and firing alerts, then recently resolved ones, and the rules in force. */
export const adminAlertRoutes = HttpRouter.empty.pipe(
  HttpRouter.get(
    "/admin/alerts",
    Effect.flatMap(Alerts, (alerts) =>
      Effect.map(alerts.list, (list) =>
        HttpServerResponse.unsafeJson({ object: "list", data: list, rules: alerts.rules }, { headers: { "cache-control": "no-store" } })))
  )
)
