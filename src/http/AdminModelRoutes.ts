import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import { LocalDeploymentConfig, ModelId } from "../config/ModelsConfig.js"
import type { ModelDefinition, ModelStatus } from "../host/ModelRegistry.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { MemoryManager } from "../memory/MemoryManager.js"
import { InvalidParam } from "./HttpErrors.js"
import { readJsonBody } from "./JsonBody.js"
import { decodeBody } from "./OpenAiMapping.js"

/** Builds what `POST /admin/models` loads: a local GGUF deployment under an id, with the server's defaults. */
export type DefineModel = (id: string, deployment: LocalDeploymentConfig) => ModelDefinition & { readonly id: string }

/** `POST /admin/models`: the id clients will send and a config-file local deployment (`gguf`, `parallel`, `ctxSize`, …). */
const LoadModelBody = Schema.Struct({ id: ModelId, ...LocalDeploymentConfig.fields })

/** How long `DELETE /admin/models/{id}` lets running requests finish before cancelling them, unless `?grace_ms=` says. */
const defaultUnloadGraceMs = 60_000

const noStore = { "cache-control": "no-store" }

const modelJson = (model: ModelStatus) => ({
  id: model.id ?? null,
  object: "model",
  state: model.draining ? "unloading" : model.state._tag.toLowerCase(),
  ...(model.state._tag === "Ready"
    ? { parallel: model.state.engine.backend.info.parallel, context_size: model.state.engine.backend.info.contextSize }
    : {}),
  ...(model.state._tag === "Failed" ? { error: model.state.message } : {})
})

const graceParam = Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
  const raw = new URL(request.url, "http://localhost").searchParams.get("grace_ms")
  if (raw === null) return Effect.succeed(defaultUnloadGraceMs)
  const grace = Number(raw)
  return Number.isInteger(grace) && grace >= 0 && grace <= 3_600_000
    ? Effect.succeed(grace)
    : Effect.fail(new InvalidParam({ param: "grace_ms", message: "grace_ms must be an integer number of milliseconds, 0 to 3600000", code: "invalid_value" }))
})

/** `GET`/`POST /admin/models`, `DELETE /admin/models/{id}` and `GET /admin/memory` (admin scope). */
export const adminModelRoutes = (options: { readonly maxBodyBytes: number; readonly defineModel?: DefineModel | undefined }) =>
  HttpRouter.empty.pipe(
    HttpRouter.get(
      "/admin/models",
      Effect.map(Effect.flatMap(ModelRegistry, (registry) => registry.models), (models) =>
        HttpServerResponse.unsafeJson({ object: "list", data: models.map(modelJson) }, { headers: noStore }))
    ),
    HttpRouter.post(
      "/admin/models",
      Effect.gen(function*() {
        const defineModel = options.defineModel
        if (defineModel === undefined) {
          return HttpServerResponse.unsafeJson(
            { error: { message: "this server cannot load models at run time (it was composed without a model factory)", type: "invalid_request_error", param: null, code: "not_supported" } },
            { status: 405, headers: { ...noStore, allow: "GET" } }
          )
        }
        const { id, ...deployment } = yield* decodeBody(LoadModelBody, yield* readJsonBody(options.maxBodyBytes))
        if (!(yield* Effect.sync(() => fs.statSync(deployment.gguf, { throwIfNoEntry: false })?.isFile() === true))) {
          return yield* new InvalidParam({ param: "gguf", message: "gguf must be the path of an existing .gguf file on the server", code: "invalid_value" })
        }
        const registry = yield* ModelRegistry
        const engine = yield* registry.load(defineModel(id, deployment))
        const info = engine.backend.info
        return HttpServerResponse.unsafeJson(
          { id, object: "model", state: "ready", parallel: info.parallel, context_size: info.contextSize },
          { status: 201, headers: noStore }
        )
      })
    ),
    HttpRouter.del(
      "/admin/models/:id",
      Effect.gen(function*() {
        const id = (yield* HttpRouter.params)["id"] ?? ""
        yield* Effect.flatMap(ModelRegistry, (registry) => Effect.flatMap(graceParam, (grace) => registry.unload(id, grace)))
        return HttpServerResponse.unsafeJson({ id, object: "model", deleted: true }, { headers: noStore })
      })
    ),
    HttpRouter.get(
      "/admin/memory",
      Effect.map(Effect.flatMap(MemoryManager, (memory) => memory.account), (account) => HttpServerResponse.unsafeJson(account, { headers: noStore }))
    )
  )
