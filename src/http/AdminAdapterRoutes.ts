import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Schema } from "effect"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { AdapterName, AdapterScale } from "../config/ModelsConfig.js"
import { AdapterContexts } from "../host/AdapterContexts.js"
import type { AdapterDeclaration, AdapterStatus } from "../host/AdapterContexts.js"
import { ModelNotFound } from "../host/HostErrors.js"
import { InvalidParam } from "./HttpErrors.js"
import { readJsonBody } from "./JsonBody.js"
import { adapterOf, soleModelId } from "./ModelRoute.js"
import { decodeBody } from "./OpenAiMapping.js"

const CreateAdapterBody = Schema.Struct({
  /** The model it applies to; may be left out when the server serves one model. */
  model: Schema.optional(Schema.String),
  name: AdapterName,
  /** The adapter's GGUF, on the server's file system. */
  path: Schema.String.pipe(Schema.minLength(1)),
  scale: Schema.optional(AdapterScale)
})

const noStore = { "cache-control": "no-store" }

const adapterJson = (status: AdapterStatus) => ({
  id: status.id,
  object: "adapter",
  model: status.model,
  name: status.name,
  path: status.path,
  scale: status.scale,
  state: status.state,
  requests: status.requests
})

/** `model:name`, or a bare name when exactly one declared adapter has it. */
const declaredAdapter = (adapters: ReadonlyArray<AdapterStatus>, given: string): Effect.Effect<AdapterStatus, ModelNotFound> => {
  const split = adapterOf(given)
  const matches = split === undefined
    ? adapters.filter((one) => one.name === given)
    : adapters.filter((one) => one.model === split.model && one.name === split.adapter)
  return matches.length === 1 ? Effect.succeed(matches[0]!) : Effect.fail(new ModelNotFound({ model: given }))
}

/** `GET /admin/adapters`, `POST /admin/adapters` and `DELETE /admin/adapters/{model:name}` (admin scope). */
export const adminAdapterRoutes = (options: { readonly maxBodyBytes: number }) =>
  HttpRouter.empty.pipe(
    HttpRouter.get(
      "/admin/adapters",
      Effect.gen(function*() {
        const adapters = yield* Effect.flatMap(AdapterContexts, (contexts) => contexts.list)
        return HttpServerResponse.unsafeJson({ object: "list", data: adapters.map(adapterJson) }, { headers: noStore })
      })
    ),
    HttpRouter.post(
      "/admin/adapters",
      Effect.gen(function*() {
        const body = yield* decodeBody(CreateAdapterBody, yield* readJsonBody(options.maxBodyBytes))
        const model = body.model ?? (yield* soleModelId)
        if (model === "") {
          return yield* new InvalidParam({ param: "model", message: "This server serves several models; name one in 'model'.", code: "missing_required_parameter" })
        }
        const filePath = path.resolve(body.path)
        const isFile = yield* Effect.promise(() => fs.stat(filePath).then((info) => info.isFile(), () => false))
        if (!isFile) return yield* new InvalidParam({ param: "path", message: `No adapter file at ${filePath}`, code: "invalid_value" })
        const declaration: AdapterDeclaration = { model, name: body.name, path: filePath, scale: body.scale ?? 1 }
        const added = yield* Effect.flatMap(AdapterContexts, (contexts) => contexts.add(declaration)).pipe(
          Effect.catchTag("AdapterLoadFailed", (error) =>
            new InvalidParam({ param: "path", message: `The adapter does not load onto ${model}: ${error.message}`, code: "invalid_value" }))
        )
        return HttpServerResponse.unsafeJson(adapterJson(added), { status: 201, headers: noStore })
      })
    ),
    HttpRouter.del(
      "/admin/adapters/*",
      Effect.gen(function*() {
        const params = yield* HttpRouter.params
        const contexts = yield* AdapterContexts
        const found = yield* declaredAdapter(yield* contexts.list, decodeURIComponentSafe(params["*"] ?? ""))
        yield* contexts.remove(found.model, found.name)
        return HttpServerResponse.unsafeJson({ ...adapterJson(found), deleted: true }, { headers: noStore })
      })
    )
  )

const decodeURIComponentSafe = (text: string): string => {
  try {
    return decodeURIComponent(text)
  } catch {
    return text
  }
}
