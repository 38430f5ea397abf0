import { Either, ParseResult, Schema } from "effect"
import * as path from "node:path"

const NonEmpty = Schema.String.pipe(Schema.minLength(1))
const Millis = Schema.Number.pipe(Schema.finite(), Schema.nonNegative())
const Count = (min: number, max: number) => Schema.Int.pipe(Schema.between(min, max))

/** A model id as clients send it; `:` is kept for `model:adapter` ids. */
export const ModelId = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}$/))

/** An adapter's name: what follows `model:` in the ids requests send. */
export const AdapterName = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/),
  Schema.annotations({ message: () => "an adapter name: letters, digits, . _ -, at most 64 characters" })
)

/** A LoRA scale: 1 applies the adapter as trained, 0 not at all. */
export const AdapterScale = Schema.Number.pipe(Schema.finite(), Schema.between(-100, 100))

/** A LoRA adapter of a local deployment, served as `model:name`. */
export const AdapterConfig = Schema.Struct({
  name: AdapterName,
  /** The adapter's GGUF, relative to the config file. */
  path: NonEmpty,
  scale: Schema.optional(AdapterScale)
})

/** A GGUF served in this process, with the settings of its own engine (its pool's size, context, queue, timeouts). */
export const LocalDeploymentConfig = Schema.Struct({
  /** Relative to the config file. */
  gguf: NonEmpty,
  /** How logs, metrics and `/admin` name it; default the model id (with its index when a model has several). */
  name: Schema.optional(NonEmpty),
  parallel: Schema.optional(Count(1, 256)),
  ctxSize: Schema.optional(Count(16, 1 << 20)),
  maxQueue: Schema.optional(Count(0, 1_000_000)),
  timeoutQueueMs: Schema.optional(Millis),
  timeoutFirstTokenMs: Schema.optional(Millis),
  timeoutTotalMs: Schema.optional(Millis),
  /** LoRA adapters on this model, each served as `model:name` in a context of its own. */
  adapters: Schema.optional(Schema.Array(AdapterConfig))
})
export interface LocalDeploymentConfig extends Schema.Schema.Type<typeof LocalDeploymentConfig> {}

/** An OpenAI-compatible server Weft forwards to. Its API key is read from the environment, never from the file. */
export const UpstreamDeploymentConfig = Schema.Struct({
  /** The API base, e.g. `http://127.0.0.1:8081/v1`. */
  url: Schema.String.pipe(Schema.pattern(/^https?:\/\/[^\s/]+(\/\S*)?$/), Schema.annotations({ message: () => "an http:// or https:// base URL such as http://127.0.0.1:8081/v1" })),
  /** The upstream's name for the model. */
  model: NonEmpty,
  name: Schema.optional(NonEmpty),
  /** The environment variable holding the upstream's API key. */
  apiKeyEnv: Schema.optional(Schema.String.pipe(Schema.pattern(/^[A-Za-z_][A-Za-z0-9_]*$/), Schema.annotations({ message: () => "an environment variable name" }))),
  /** Share of round-robin traffic relative to the model's other deployments. */
  weight: Schema.optional(Schema.Number.pipe(Schema.positive(), Schema.finite())),
  pool: Schema.optional(Schema.Struct({
    connections: Schema.optional(Count(1, 1024)),
    keepAliveMs: Schema.optional(Millis),
    /** Requests in flight at most before the deployment counts as saturated; default twice `connections`. */
    maxInFlight: Schema.optional(Count(1, 1_000_000))
  })),
  timeouts: Schema.optional(Schema.Struct({
    connectMs: Schema.optional(Millis),
    firstByteMs: Schema.optional(Millis),
    totalMs: Schema.optional(Millis)
  }))
})
export interface UpstreamDeploymentConfig extends Schema.Schema.Type<typeof UpstreamDeploymentConfig> {}

export type DeploymentConfig = LocalDeploymentConfig | UpstreamDeploymentConfig

export const isLocalDeployment = (deployment: DeploymentConfig): deployment is LocalDeploymentConfig => "gguf" in deployment

export const routingStrategies = ["round-robin", "least-busy", "lowest-latency", "session-affinity"] as const

const modelFields = {
  routing: Schema.optional(Schema.Literal(...routingStrategies)),
  /** Other model ids of this file, tried in order when every deployment of this one is down. */
  fallbacks: Schema.optional(Schema.Array(ModelId)),
  retry: Schema.optional(Schema.Struct({
    /** Attempts after the first. */
    retries: Schema.optional(Count(0, 10)),
    baseDelayMs: Schema.optional(Millis),
    maxDelayMs: Schema.optional(Millis)
  })),
  breaker: Schema.optional(Schema.Struct({
    /** Consecutive failures that open the breaker. */
    failures: Schema.optional(Count(1, 1_000_000)),
    /** Failure share within `windowMs` (with at least `minRequests`) that opens it. */
    failureRate: Schema.optional(Schema.Number.pipe(Schema.between(0, 1))),
    windowMs: Schema.optional(Millis),
    minRequests: Schema.optional(Count(1, 1_000_000)),
    cooldownMs: Schema.optional(Millis),
    halfOpenProbes: Schema.optional(Count(1, 1000))
  }))
}

/** One model id clients send, and where its requests may go. */
export const ModelConfig = Schema.Struct({
  deployments: Schema.NonEmptyArray(Schema.Union(LocalDeploymentConfig, UpstreamDeploymentConfig)),
  ...modelFields
})
export interface ModelConfig extends Schema.Schema.Type<typeof ModelConfig> {}

/** The config file's `models`: model id → its deployments and routing. */
export const ModelsConfig = Schema.Record({ key: ModelId, value: ModelConfig })
export type ModelsConfig = Schema.Schema.Type<typeof ModelsConfig>

/** The file's shape before each deployment is decoded by the schema of its own kind (a union would report both kinds' errors). */
const ModelsOutline = Schema.Record({
  key: ModelId,
  value: Schema.Struct({
    deployments: Schema.Array(Schema.Unknown).pipe(Schema.minItems(1, { message: () => "expected at least one deployment" })),
    ...modelFields
  })
})

/**
 * The id a local deployment's engine is registered under in the `ModelRegistry`, and the name logs, metrics and
 * `/admin/upstreams` give any deployment.
 */
export const localEngineId = (modelId: string, model: ModelConfig, index: number): string => {
  const deployment = model.deployments[index]!
  if (deployment.name !== undefined) return deployment.name
  return model.deployments.length === 1 ? modelId : `${modelId}#${index}`
}

const renderPath = (segments: ReadonlyArray<PropertyKey>): string =>
  segments.reduce<string>((text, segment) => (typeof segment === "number" ? `${text}[${segment}]` : `${text}.${String(segment)}`), "models")

const deploymentShapeError = (modelId: string, index: number, deployment: unknown): string | undefined => {
  const at = renderPath([modelId, "deployments", index])
  if (typeof deployment !== "object" || deployment === null || Array.isArray(deployment)) return `${at}: expected an object`
  const keys = Object.keys(deployment)
  if (keys.includes("apiKey")) return `${at}.apiKey: API keys are never written in the config file; put it in an environment variable and name that in "apiKeyEnv"`
  const local = keys.includes("gguf")
  const upstream = keys.includes("url")
  if (local && upstream) return `${at}: a deployment is either local ("gguf") or upstream ("url"), not both`
  if (!local && !upstream) return `${at}: expected "gguf" (a local model file) or "url" (an upstream server)`
  return undefined
}

/**
 * Decodes the config file's `models`, failing with a message that starts with the path of the bad key
 * (`models.chat.deployments[1].url: ...`). Local `gguf` paths are resolved against `baseDir`.
 */
export const decodeModelsConfig = (raw: unknown, baseDir: string): Either.Either<ModelsConfig, string> => {
  const options = { onExcessProperty: "error", errors: "first" } as const
  const failure = (error: ParseResult.ParseError, prefix: ReadonlyArray<PropertyKey>) => {
    const issue = ParseResult.ArrayFormatter.formatErrorSync(error)[0]
    return issue === undefined ? `${renderPath(prefix)}: invalid` : `${renderPath([...prefix, ...issue.path])}: ${issue.message}`
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return Either.left("models: expected an object of model id → { \"deployments\": [...] }")
  const badId = Object.keys(raw).find((modelId) => Either.isLeft(Schema.decodeUnknownEither(ModelId)(modelId)))
  if (badId !== undefined) return Either.left(`models.${badId}: not a model id (letters, digits, . _ - /, at most 128 characters; no ":", which selects an adapter)`)
  const outline = Schema.decodeUnknownEither(ModelsOutline, options)(raw)
  if (Either.isLeft(outline)) return Either.left(failure(outline.left, []))
  const models: Record<string, ModelConfig> = {}
  for (const [modelId, model] of Object.entries(outline.right)) {
    const deployments: Array<DeploymentConfig> = []
    for (const [index, deployment] of model.deployments.entries()) {
      const problem = deploymentShapeError(modelId, index, deployment)
      if (problem !== undefined) return Either.left(problem)
      const decoded: Either.Either<DeploymentConfig, ParseResult.ParseError> = "gguf" in (deployment as object)
        ? Schema.decodeUnknownEither(LocalDeploymentConfig, options)(deployment)
        : Schema.decodeUnknownEither(UpstreamDeploymentConfig, options)(deployment)
      if (Either.isLeft(decoded)) return Either.left(failure(decoded.left, [modelId, "deployments", index]))
      if (isLocalDeployment(decoded.right)) {
        const names = (decoded.right.adapters ?? []).map((adapter) => adapter.name)
        const repeated = names.find((name, at) => names.indexOf(name) !== at)
        if (repeated !== undefined) return Either.left(`${renderPath([modelId, "deployments", index, "adapters"])}: the name "${repeated}" is used twice`)
      }
      deployments.push(
        isLocalDeployment(decoded.right)
          ? {
            ...decoded.right,
            gguf: path.resolve(baseDir, decoded.right.gguf),
            ...(decoded.right.adapters === undefined
              ? {}
              : { adapters: decoded.right.adapters.map((adapter) => ({ ...adapter, path: path.resolve(baseDir, adapter.path) })) })
          }
          : decoded.right
      )
    }
    models[modelId] = { ...model, deployments: deployments as unknown as ModelConfig["deployments"] }
  }
  for (const [modelId, model] of Object.entries(models)) {
    for (const [index, fallback] of (model.fallbacks ?? []).entries()) {
      const at = renderPath([modelId, "fallbacks", index])
      if (fallback === modelId) return Either.left(`${at}: a model cannot fall back to itself`)
      if (!(fallback in models)) return Either.left(`${at}: "${fallback}" is not a model of this file`)
    }
  }
  const duplicate = duplicateDeploymentName(models)
  return duplicate === undefined ? Either.right(models) : Either.left(duplicate)
}

/** The deployment names of every model, each once: a name that two deployments share is refused with its path. */
export const duplicateDeploymentName = (models: ModelsConfig): string | undefined => {
  const seen = new Set<string>()
  for (const [modelId, model] of Object.entries(models)) {
    for (const index of model.deployments.keys()) {
      const name = localEngineId(modelId, model, index)
      if (seen.has(name)) return `${renderPath([modelId, "deployments", index, "name"])}: "${name}" names another deployment already`
      seen.add(name)
    }
  }
  return undefined
}

/** Whether a model goes through the router: it has an upstream deployment, several deployments, or fallbacks. */
export const isRoutedModel = (model: ModelConfig): boolean =>
  model.deployments.length > 1 || model.deployments.some((deployment) => !isLocalDeployment(deployment)) || (model.fallbacks ?? []).length > 0
