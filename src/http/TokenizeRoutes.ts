import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Schema } from "effect"
import { ModelLoading } from "../host/HostErrors.js"
import type { Engine } from "../host/LocalEngine.js"
import { ModelRegistry } from "../host/ModelRegistry.js"
import { InvalidParam } from "./HttpErrors.js"
import { readJsonBody } from "./JsonBody.js"
import { resolveModel } from "./ModelRoute.js"
import type { AdapterContexts } from "../host/AdapterContexts.js"
import type { RequestModel, ResolveFailure } from "./ModelRoute.js"
import type { MemoryManager } from "../memory/MemoryManager.js"
import { decodeBody } from "./OpenAiMapping.js"
import { checkTokenIds } from "./TokenIds.js"

const optional = <S extends Schema.Schema.Any>(schema: S) => Schema.optionalWith(schema, { nullable: true })

/** Body of `POST /tokenize`, as llama-server takes it, plus the model to use. */
export const TokenizeRequest = Schema.Struct({
  content: Schema.String,
  /** Put the model's beginning-of-sequence token first, when the model uses one. Default false. */
  add_special: optional(Schema.Boolean),
  /** Read special-token text (`<|im_start|>`) as the special token rather than as plain text. Default true. */
  parse_special: optional(Schema.Boolean),
  /** Answer `{ id, piece }` per token instead of bare ids. Default false. */
  with_pieces: optional(Schema.Boolean),
  model: optional(Schema.String)
})

/** Body of `POST /detokenize`, as llama-server takes it, plus the model to use. */
export const DetokenizeRequest = Schema.Struct({
  tokens: Schema.Array(Schema.Int),
  model: optional(Schema.String)
})

/** The engine of the named model, or of the only registered model when none is named. */
const engineFor = (model: string | undefined): Effect.Effect<Engine, InvalidParam | ResolveFailure, ModelRegistry | MemoryManager | AdapterContexts | RequestModel> =>
  model !== undefined
    ? resolveModel(model)
    : Effect.flatMap(ModelRegistry, (registry) =>
      Effect.flatMap(registry.models, (models): Effect.Effect<Engine, InvalidParam | ResolveFailure, ModelRegistry | MemoryManager | AdapterContexts | RequestModel> => {
        const only = models.length === 1 ? models[0]! : undefined
        if (only === undefined) {
          return new InvalidParam({
            param: "model",
            message: `This server serves ${models.length} models; name one in 'model'.`,
            code: "missing_required_parameter"
          })
        }
        return only.id === undefined ? new ModelLoading() : resolveModel(only.id)
      }))

/** `POST /tokenize`: the tokens of `content`; special-token text parsed unless `parse_special` is false. */
const tokenize = (maxBodyBytes: number) =>
  Effect.gen(function*() {
    const body = yield* decodeBody(TokenizeRequest, yield* readJsonBody(maxBodyBytes))
    const { backend } = yield* engineFor(body.model)
    const parsed = yield* backend.tokenize(body.content, { special: body.parse_special ?? true })
    const bos = backend.info.bosToken
    const tokens = body.add_special === true && backend.info.addBosToken && bos !== undefined && parsed[0] !== bos
      ? [bos, ...parsed]
      : parsed
    if (body.with_pieces !== true) return HttpServerResponse.unsafeJson({ tokens })
    return HttpServerResponse.unsafeJson({
      // Each piece renders after the token before it, so a word's leading space stays on it and the pieces spell the text.
      tokens: tokens.map((id, index) => ({
        id,
        piece: backend.detokenize([id], index === 0 ? undefined : [tokens[index - 1]!], { special: true })
      }))
    })
  }).pipe(Effect.withSpan("http.tokenize"))

/** `POST /detokenize`: the text of `tokens`, special tokens written as their text. */
const detokenize = (maxBodyBytes: number) =>
  Effect.gen(function*() {
    const body = yield* decodeBody(DetokenizeRequest, yield* readJsonBody(maxBodyBytes))
    const { backend } = yield* engineFor(body.model)
    yield* checkTokenIds(body.tokens, backend.info.vocabSize, "tokens")
    return HttpServerResponse.unsafeJson({ content: backend.detokenize(body.tokens, undefined, { special: true }) })
  }).pipe(Effect.withSpan("http.detokenize"))

/** llama-server's `POST /tokenize` and `POST /detokenize`. */
export const tokenizeRoutes = (options: { readonly maxBodyBytes: number }) =>
  HttpRouter.empty.pipe(
    HttpRouter.post("/tokenize", tokenize(options.maxBodyBytes)),
    HttpRouter.post("/detokenize", detokenize(options.maxBodyBytes))
  )
