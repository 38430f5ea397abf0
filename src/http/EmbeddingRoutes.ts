import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Schema } from "effect"
import type { BackendShape } from "../engine/Backend.js"
import { InvalidParam } from "./HttpErrors.js"
import { readJsonBody } from "./JsonBody.js"
import { resolveModel } from "./ModelRoute.js"
import { decodeBody } from "./OpenAiMapping.js"
import { checkTokenIds } from "./TokenIds.js"

const optional = <S extends Schema.Schema.Any>(schema: S) => Schema.optionalWith(schema, { nullable: true })

const PositiveInt = Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)).annotations({ message: () => "an integer of at least 1" })

/** OpenAI's limit on the inputs of one request. */
export const maxEmbeddingInputs = 2048

/** Body of `POST /v1/embeddings`: OpenAI's fields, then Weft's per-request timeouts. */
export const EmbeddingRequest = Schema.Struct({
  model: Schema.String,
  input: Schema.Union(Schema.String, Schema.Array(Schema.String), Schema.Array(Schema.Int), Schema.Array(Schema.Array(Schema.Int)))
    .annotations({
      message: () => ({
        message: "a string, an array of strings, an array of token ids, or an array of arrays of token ids",
        override: true
      })
    }),
  encoding_format: optional(Schema.Literal("float", "base64")).annotations({
    message: () => ({ message: "one of \"float\", \"base64\"", override: true })
  }),
  dimensions: optional(PositiveInt),
  user: optional(Schema.String),
  timeout_queue_ms: optional(PositiveInt),
  timeout_total_ms: optional(PositiveInt)
})
export type EmbeddingRequest = typeof EmbeddingRequest.Type

/** One input with the parameter path an error about it names. */
export type EmbeddingInput = { readonly param: string; readonly value: string | ReadonlyArray<number> }

const isTokenArray = (input: EmbeddingRequest["input"]): input is ReadonlyArray<number> =>
  Array.isArray(input) && input.length > 0 && typeof input[0] === "number"

/** The request's inputs, each with its parameter path: one string or token array, or an array of them. */
const inputsOf = (input: EmbeddingRequest["input"]): ReadonlyArray<EmbeddingInput> =>
  typeof input === "string" || isTokenArray(input)
    ? [{ param: "input", value: input }]
    : (input as ReadonlyArray<string | ReadonlyArray<number>>).map((value, index) => ({ param: `input[${index}]`, value }))

const emptyInput = (param: string) =>
  new InvalidParam({ param, message: `Invalid value for '${param}': the input must not be empty`, code: "invalid_value" })

/** The input's tokens, checked: non-empty, ids in the vocabulary, short enough for the model's embedding context. */
export const embeddingTokens = (backend: BackendShape, input: EmbeddingInput) =>
  Effect.gen(function*() {
    if (input.value.length === 0) return yield* emptyInput(input.param)
    const tokens = typeof input.value === "string" ? yield* backend.tokenize(input.value) : input.value
    if (typeof input.value !== "string") yield* checkTokenIds(tokens, backend.info.vocabSize, input.param)
    if (tokens.length === 0) return yield* emptyInput(input.param)
    const limit = backend.info.maxEmbeddingTokens
    if (tokens.length > limit) {
      return yield* new InvalidParam({
        param: input.param,
        message: `This model's maximum context length for embeddings is ${limit} tokens, however you requested ` +
          `${tokens.length} tokens (${tokens.length} in your prompt; 0 for the completion). Please reduce your prompt.`,
        code: "context_length_exceeded"
      })
    }
    return tokens
  })

/** `vector` as OpenAI's base64 encoding: its float32 values, little-endian, whatever the platform's byte order. */
const base64Of = (vector: Float32Array): string => {
  const bytes = new DataView(new ArrayBuffer(vector.length * 4))
  vector.forEach((value, index) => bytes.setFloat32(index * 4, value, true))
  return Buffer.from(bytes.buffer).toString("base64")
}

/**
 * `POST /v1/embeddings`. Each input is tokenized and checked before the request is admitted; the whole request is
 * then one admission (see `makeEmbeddingGate`), its inputs embedded one after another.
 */
const embeddings = (maxBodyBytes: number) =>
  Effect.gen(function*() {
    const body = yield* decodeBody(EmbeddingRequest, yield* readJsonBody(maxBodyBytes))
    const { backend, scheduler } = yield* resolveModel(body.model)
    if (body.dimensions !== undefined && body.dimensions !== backend.info.embeddingSize) {
      return yield* new InvalidParam({
        param: "dimensions",
        message: `This model does not support specifying dimensions: its embeddings have ${backend.info.embeddingSize} ` +
          `dimensions, and it does not declare that shorter ones keep their meaning. Omit 'dimensions' or send ${backend.info.embeddingSize}.`,
        code: "unsupported_value"
      })
    }
    const inputs = inputsOf(body.input)
    if (inputs.length === 0) return yield* emptyInput("input")
    if (inputs.length > maxEmbeddingInputs) {
      return yield* new InvalidParam({
        param: "input",
        message: `Invalid value for 'input': at most ${maxEmbeddingInputs} inputs are accepted in one request, got ${inputs.length}`,
        code: "invalid_value"
      })
    }
    const tokens = yield* Effect.forEach(inputs, (input) => embeddingTokens(backend, input))
    const vectors = yield* scheduler.embed(tokens, { queueMs: body.timeout_queue_ms, totalMs: body.timeout_total_ms })
    const promptTokens = tokens.reduce((sum, one) => sum + one.length, 0)
    return HttpServerResponse.unsafeJson({
      object: "list",
      data: vectors.map((vector, index) => ({
        object: "embedding",
        index,
        embedding: body.encoding_format === "base64" ? base64Of(vector) : Array.from(vector)
      })),
      model: backend.info.id,
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens }
    })
  }).pipe(Effect.withSpan("http.embeddings"))

/** `POST /v1/embeddings`. */
export const embeddingRoutes = (options: { readonly maxBodyBytes: number }) =>
  HttpRouter.empty.pipe(HttpRouter.post("/v1/embeddings", embeddings(options.maxBodyBytes)))
