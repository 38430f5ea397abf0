import { HttpServerResponse } from "@effect/platform"
import type { ChatTemplateFailed, DecodeFailed, EmbeddingFailed, PromptTooLarge, StructuredOutputInvalid } from "../engine/Backend.js"
import type { AdmissionRejected, StageTimedOut } from "../scheduler/SchedulerErrors.js"
import type { SessionStoreFailed } from "../sessions/SessionStore.js"
import type { RateLimited, TokensOverLimit } from "../identity/RateLimiter.js"
import type { AdapterExists, AdaptersUnsupported } from "../host/AdapterContexts.js"
import { ModelNotFound } from "../host/HostErrors.js"
import type { ModelAlreadyServed, ModelLoading, ModelUnloading } from "../host/HostErrors.js"
import type { ModelLoadFailed } from "../engine/llama/LlamaBackend.js"
import type { ModelWriteFailed } from "../model/generateModel.js"
import type { MemoryBudgetExceeded, MemoryPressure } from "../memory/MemoryManager.js"
import type { ModelDoesNotFit } from "../memory/ModelDoesNotFit.js"
import type { KeyRejected, ScopeMissing } from "../identity/AuthErrors.js"
import { KeyNotFound } from "../identity/KeyStore.js"
import type { KeyStoreFailed } from "../identity/KeyStore.js"
import { ResponseNotFound, SessionNotFound } from "./HttpErrors.js"
import type {
  BodyNestedTooDeep,
  BodyNotDeclaredJson,
  BodyNotJson,
  BodyTooLarge,
  GenerationCancelled,
  HostNotAllowed,
  InvalidParam,
  MethodNotAllowed,
  OriginNotAllowed
} from "./HttpErrors.js"
import { shorten } from "./QuotedValue.js"
import type { PluginFailed, PluginRejected, PluginRouteNotFound } from "../plugins/PluginErrors.js"
import type { ReplicaUnavailable } from "../cluster/ClusterErrors.js"
import type { DeploymentsSaturated, ModelUnavailable, UpstreamFailed, UpstreamRejected } from "../upstream/UpstreamErrors.js"
import type { DatasetRejected, FineTuningDisabled, FineTuningObjectNotFound, JobParamRejected, JobStateConflict } from "../training/jobs/FineTuningErrors.js"
import type { FineTuningStoreFailed } from "../training/jobs/FineTuningStore.js"

/** Every expected failure an OpenAI endpoint can answer with. */
export type ApiFailure =
  | BodyNotJson
  | BodyTooLarge
  | BodyNestedTooDeep
  | BodyNotDeclaredJson
  | HostNotAllowed
  | OriginNotAllowed
  | MethodNotAllowed
  | InvalidParam
  | ModelNotFound
  | ModelLoading
  | ModelUnloading
  | ModelAlreadyServed
  | ModelLoadFailed
  | ModelWriteFailed
  | ModelDoesNotFit
  | MemoryBudgetExceeded
  | MemoryPressure
  | GenerationCancelled
  | AdmissionRejected
  | StageTimedOut
  | DecodeFailed
  | EmbeddingFailed
  | ChatTemplateFailed
  | PromptTooLarge
  | SessionNotFound
  | SessionStoreFailed
  | ResponseNotFound
  | StructuredOutputInvalid
  | KeyRejected
  | ScopeMissing
  | KeyNotFound
  | KeyStoreFailed
  | RateLimited
  | TokensOverLimit
  | PluginRejected
  | PluginFailed
  | PluginRouteNotFound
  | UpstreamFailed
  | UpstreamRejected
  | ModelUnavailable
  | DeploymentsSaturated
  | AdapterExists
  | AdaptersUnsupported
  | FineTuningObjectNotFound
  | JobStateConflict
  | DatasetRejected
  | JobParamRejected
  | FineTuningDisabled
  | FineTuningStoreFailed
  | ReplicaUnavailable

/** OpenAI's error object, as it appears under `error` in a response body or an SSE frame. */
export interface OpenAiErrorBody {
  readonly message: string
  readonly type: string
  readonly param: string | null
  readonly code: string | null
}

/** An error answer: status, OpenAI's envelope, and extra headers. */
export interface ErrorReply {
  readonly status: number
  readonly error: OpenAiErrorBody
  readonly headers: Readonly<Record<string, string>>
}

/** The longest message an error carries: values are quoted shorter, this only catches a message that quotes one whole. */
const messageLimit = 1000

const reply = (
  status: number,
  error: OpenAiErrorBody,
  headers: Readonly<Record<string, string>> = {}
): ErrorReply => ({
  status,
  error: { ...error, message: shorten(error.message, messageLimit), param: error.param === null ? null : shorten(error.param, messageLimit) },
  headers
})

const invalid = (message: string, param: string | null, code: string | null) =>
  reply(400, { message, type: "invalid_request_error", param, code })

/** 404 for something the request names that does not exist; `missing` is rebuilt with its id shortened. */
const notFound = (missing: { readonly message: string }, param: string | null, code: string) =>
  reply(404, { message: missing.message, type: "invalid_request_error", param, code })

/** The one mapping from failures to HTTP status and OpenAI's envelope. */
export const errorReply = (failure: ApiFailure): ErrorReply => {
  switch (failure._tag) {
    case "BodyNotJson":
      return invalid(failure.message, null, null)
    case "BodyNestedTooDeep":
      return invalid(failure.message, null, "nesting_too_deep")
    case "BodyNotDeclaredJson":
      return reply(415, { message: failure.message, type: "invalid_request_error", param: null, code: "unsupported_media_type" })
    case "HostNotAllowed":
      return reply(403, { message: failure.message, type: "invalid_request_error", param: null, code: "host_not_allowed" })
    case "OriginNotAllowed":
      return reply(403, { message: failure.message, type: "invalid_request_error", param: null, code: "origin_not_allowed" })
    case "MethodNotAllowed":
      return reply(405, { message: failure.message, type: "invalid_request_error", param: null, code: "method_not_allowed" }, {
        allow: failure.allowed.join(", ")
      })
    case "InvalidParam":
      return invalid(failure.message, failure.param, failure.code)
    case "PromptEmpty":
      return invalid("The prompt is empty: it has no tokens to continue from", null, "empty_prompt")
    case "PromptTooLong":
      return invalid(
        `This model's maximum context length is ${failure.contextSize} tokens. However, your prompt has ` +
          `${failure.promptTokens} tokens. Please reduce the length of the prompt.`,
        null,
        "context_length_exceeded"
      )
    case "PromptTooLarge":
      return invalid(
        `This model's maximum context length is ${failure.contextSize} tokens, which no prompt over ` +
          `${failure.maxBytes} bytes can fit; yours has ${failure.bytes} bytes. Please reduce the length of the prompt.`,
        null,
        "context_length_exceeded"
      )
    case "PromptTokenInvalid":
      return invalid(`The prompt holds token id ${failure.token}, outside the model's vocabulary of ${failure.vocabSize}`, "prompt", "invalid_token")
    case "ChatTemplateFailed":
      return invalid(`The model's chat template could not render these messages: ${failure.message}`, "messages", "chat_template_failed")
    case "SessionNotFound":
      return notFound(new SessionNotFound({ sessionId: shorten(failure.sessionId) }), "session_id", "session_not_found")
    case "SessionStoreFailed":
      return reply(500, { message: "The session store failed; the turn was not saved", type: "server_error", param: null, code: null })
    case "ResponseNotFound":
      return notFound(new ResponseNotFound({ responseId: shorten(failure.responseId), param: failure.param }), failure.param, "response_not_found")
    case "ModelNotFound":
      return notFound(new ModelNotFound({ model: shorten(failure.model) }), "model", "model_not_found")
    case "BodyTooLarge":
      return reply(413, { message: failure.message, type: "invalid_request_error", param: null, code: "request_too_large" }, {
        connection: "close"
      })
    case "QueueFull":
      return reply(
        429,
        {
          message: `The server is busy: ${failure.queued} requests are already waiting (limit ${failure.limit}). ` +
            `Retry after ${failure.retryAfterSeconds} s.`,
          type: "rate_limit_error",
          param: null,
          code: "queue_full"
        },
        { "retry-after": String(failure.retryAfterSeconds) }
      )
    case "RateLimited":
      // OpenAI's own 429: `type` says which limit (`requests`, `tokens`); the x-ratelimit-* headers come with every answer.
      return reply(
        429,
        { message: failure.message, type: failure.kind === "tokens" ? "tokens" : "requests", param: null, code: "rate_limit_exceeded" },
        { "retry-after": String(failure.retryAfterSeconds) }
      )
    case "UpstreamFailed":
      return reply(502, { message: failure.message, type: "server_error", param: null, code: "upstream_failed" })
    case "UpstreamRejected":
      // The upstream's own answer to a request it will not serve, relayed (its key scrubbed from the message).
      return reply(failure.status, failure.error)
    case "ModelUnavailable":
      return reply(503, { message: failure.message, type: "server_error", param: "model", code: "model_unavailable" }, { "retry-after": "1" })
    case "DeploymentsSaturated":
      return reply(429, { message: failure.message, type: "rate_limit_error", param: null, code: "upstreams_saturated" }, {
        "retry-after": String(failure.retryAfterSeconds)
      })
    case "TokensOverLimit":
      return invalid(failure.message, "max_tokens", "tokens_over_rate_limit")
    case "StageTimedOut":
      return failure.stage === "queue"
        ? reply(408, { message: `Timed out waiting for a free slot: ${failure.message}`, type: "timeout_error", param: null, code: "queue_timeout" })
        : reply(504, { message: `Generation timed out: ${failure.message}`, type: "timeout_error", param: null, code: "generation_timeout" })
    case "ShuttingDown":
      return reply(503, { message: "The server is shutting down and accepts no new requests", type: "server_error", param: null, code: "shutting_down" }, {
        connection: "close"
      })
    case "ModelLoading":
      return reply(503, { message: failure.message, type: "server_error", param: null, code: "model_loading" }, { "retry-after": "1" })
    case "ModelUnloading":
      return reply(503, { message: failure.message, type: "server_error", param: "model", code: "model_unloading" }, { "retry-after": "1" })
    case "ModelAlreadyServed":
      return reply(409, { message: failure.message, type: "invalid_request_error", param: "id", code: "model_exists" })
    case "ModelLoadFailed":
      return reply(400, {
        message: `The model file could not be loaded: ${failure.message}`,
        type: "invalid_request_error",
        param: "gguf",
        code: "model_load_failed"
      })
    case "ModelDoesNotFit":
    case "MemoryBudgetExceeded":
      return reply(507, { message: failure.message, type: "server_error", param: null, code: "insufficient_memory" })
    case "MemoryPressure":
      return reply(503, { message: failure.message, type: "server_error", param: null, code: "memory_pressure" }, {
        "retry-after": String(failure.retryAfterSeconds)
      })
    case "GenerationCancelled":
      return reply(503, { message: failure.message, type: "server_error", param: null, code: failure.shuttingDown ? "shutting_down" : "cancelled" })
    case "KeyRejected":
      return reply(401, { message: failure.message, type: "invalid_request_error", param: null, code: "invalid_api_key" })
    case "ScopeMissing":
      return reply(403, { message: failure.message, type: "invalid_request_error", param: null, code: "insufficient_scope" })
    case "KeyNotFound":
      return notFound(new KeyNotFound({ keyId: shorten(failure.keyId) }), "id", "key_not_found")
    case "KeyStoreFailed":
    case "ModelWriteFailed":
    case "DecodeFailed":
    case "EmbeddingFailed":
      return internalError()
    case "PluginRejected":
      return reply(failure.status, { message: failure.reason, type: "invalid_request_error", param: null, code: failure.code ?? "rejected_by_plugin" })
    case "PluginFailed":
      return reply(500, { message: failure.message, type: "server_error", param: null, code: "plugin_failed" })
    case "PluginRouteNotFound":
      return reply(404, { message: `No plugin route at ${shorten(failure.path)}`, type: "invalid_request_error", param: null, code: "unknown_url" })
    case "AdapterExists":
      return reply(409, { message: failure.message, type: "invalid_request_error", param: "name", code: "adapter_exists" })
    case "AdaptersUnsupported":
      return invalid(failure.message, "model", "adapters_unsupported")
    case "FineTuningObjectNotFound":
      return reply(404, {
        message: shorten(failure.message),
        type: "invalid_request_error",
        param: failure.kind === "file" ? "file_id" : "fine_tuning_job_id",
        code: failure.kind === "file" ? "file_not_found" : "fine_tuning_job_not_found"
      })
    case "JobStateConflict":
      return invalid(failure.message, null, "invalid_job_state")
    case "DatasetRejected":
      return invalid(failure.message, "file", "invalid_file")
    case "JobParamRejected":
      return invalid(failure.message, failure.param, failure.code)
    case "FineTuningDisabled":
      return reply(404, { message: failure.message, type: "invalid_request_error", param: null, code: "fine_tuning_disabled" })
    case "FineTuningStoreFailed":
      return internalError()
    case "ReplicaUnavailable":
      return reply(503, { message: failure.message, type: "server_error", param: null, code: "replica_unavailable" }, { "retry-after": "1" })
    case "StructuredOutputInvalid":
      return reply(500, {
        message: `The generated output does not match the requested schema (${failure.violation}); this is a server bug`,
        type: "server_error",
        param: null,
        code: "structured_output_invalid"
      })
  }
}

/** A 500 that tells the client nothing about internals; the cause is logged with the request id. */
export const internalError = (): ErrorReply =>
  reply(500, { message: "The server had an error while processing your request", type: "server_error", param: null, code: "internal_error" })

/** 404 for a path (or method) the server does not route. */
export const unknownRoute = (method: string, url: string): ErrorReply =>
  reply(404, { message: `Unknown request URL: ${shorten(method)} ${shorten(url.split("?")[0] ?? "")}`, type: "invalid_request_error", param: null, code: "unknown_url" })

/** The reply as an HTTP response. */
export const errorResponse = (error: ErrorReply): HttpServerResponse.HttpServerResponse =>
  HttpServerResponse.unsafeJson({ error: error.error }, { status: error.status, headers: error.headers })
