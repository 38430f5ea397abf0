import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import { Plugins } from "../plugins/Plugins.js"
import { readJsonBody } from "./JsonBody.js"

/** A plugin route reads a JSON body only when the request declares one. */
const bodyOf = (request: HttpServerRequest.HttpServerRequest, maxBodyBytes: number) =>
  request.headers["content-length"] === undefined && request.headers["transfer-encoding"] === undefined
    ? Effect.succeed(undefined)
    : request.headers["content-type"] === undefined ? Effect.succeed(undefined) : readJsonBody(maxBodyBytes)

/** `/plugins/<name>/…`: the routes plugins add; `GET /admin/plugins`: every plugin with its hook timings and errors. */
export const pluginRoutes = (options: { readonly maxBodyBytes: number }) =>
  HttpRouter.empty.pipe(
    HttpRouter.all(
      "/plugins/*",
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const url = new URL(request.url, "http://plugin.invalid")
        const [, , name = "", ...rest] = url.pathname.split("/")
        const reply = yield* Effect.flatMap(Plugins, (plugins) =>
          Effect.flatMap(bodyOf(request, options.maxBodyBytes), (body) =>
            plugins.route(name, {
              method: request.method,
              path: `/${rest.join("/")}`,
              query: Object.fromEntries(url.searchParams),
              headers: request.headers,
              body
            })))
        const init = { status: reply.status ?? 200, headers: { "cache-control": "no-store", ...reply.headers } }
        return typeof reply.body === "string"
          ? HttpServerResponse.text(reply.body, init)
          : reply.body === undefined
          ? HttpServerResponse.empty(init)
          : HttpServerResponse.unsafeJson(reply.body, init)
      })
    ),
    HttpRouter.get(
      "/admin/plugins",
      Effect.flatMap(Plugins, (plugins) =>
        Effect.map(plugins.list, (data) => HttpServerResponse.unsafeJson({ object: "list", data }, { headers: { "cache-control": "no-store" } })))
    )
  )
