import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Clock, Effect } from "effect"
import { KeyStore } from "../identity/KeyStore.js"
import { CreateKeyBody, defaultOverlapMs, keyJson, RotateKeyBody } from "../identity/KeyJson.js"
import { readJsonBody } from "./JsonBody.js"
import { decodeBody } from "./OpenAiMapping.js"

const keyIdParam = Effect.map(HttpRouter.params, (params) => params["id"] ?? "")

const noStore = { "cache-control": "no-store" }

/** A body that may be left out entirely (no `Content-Length`, or zero, and not chunked): `{}`. */
const optionalJsonBody = (maxBodyBytes: number) =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const length = request.headers["content-length"]
    const empty = request.headers["transfer-encoding"] === undefined && (length === undefined || length.trim() === "0")
    return empty ? Effect.succeed<unknown>({}) : readJsonBody(maxBodyBytes)
  })

/** `POST /admin/keys`, `GET /admin/keys`, `DELETE /admin/keys/{id}`, `POST /admin/keys/{id}/rotate` (admin scope). */
export const adminKeyRoutes = (options: { readonly maxBodyBytes: number }) =>
  HttpRouter.empty.pipe(
    HttpRouter.post(
      "/admin/keys",
      Effect.gen(function*() {
        const body = yield* decodeBody(CreateKeyBody, yield* readJsonBody(options.maxBodyBytes))
        const created = yield* Effect.flatMap(KeyStore, (store) =>
          store.create({
            name: body.name,
            tenant: body.tenant,
            scopes: body.scopes ?? ["inference"],
            expiresInMs: body.expires,
            limits: { rpm: body.rpm, tpm: body.tpm, maxConcurrent: body.max_concurrent }
          }))
        // The only time the key is shown.
        return HttpServerResponse.unsafeJson({ ...keyJson(created, created.createdAt), key: created.key }, { status: 201, headers: noStore })
      })
    ),
    HttpRouter.get(
      "/admin/keys",
      Effect.gen(function*() {
        const keys = yield* Effect.flatMap(KeyStore, (store) => store.list())
        const now = yield* Clock.currentTimeMillis
        return HttpServerResponse.unsafeJson({ object: "list", data: keys.map((key) => keyJson(key, now)) }, { headers: noStore })
      })
    ),
    HttpRouter.del(
      "/admin/keys/:id",
      Effect.gen(function*() {
        const revoked = yield* Effect.flatMap(KeyStore, (store) => Effect.flatMap(keyIdParam, store.revoke))
        return HttpServerResponse.unsafeJson({ ...keyJson(revoked, yield* Clock.currentTimeMillis), deleted: true }, { headers: noStore })
      })
    ),
    HttpRouter.post(
      "/admin/keys/:id/rotate",
      Effect.gen(function*() {
        const body = yield* decodeBody(RotateKeyBody, yield* optionalJsonBody(options.maxBodyBytes))
        const store = yield* KeyStore
        const { created, previous } = yield* store.rotate(yield* keyIdParam, body.overlap ?? defaultOverlapMs)
        const now = yield* Clock.currentTimeMillis
        return HttpServerResponse.unsafeJson(
          { ...keyJson(created, now), key: created.key, previous: keyJson(previous, now) },
          { status: 201, headers: noStore }
        )
      })
    )
  )
