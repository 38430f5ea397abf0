/** Weft as an `@effect/ai` provider: language and embedding models on local GGUF models, in process. */
export * as WeftEmbeddingModel from "./WeftEmbeddingModel.js"
export * as WeftLanguageModel from "./WeftLanguageModel.js"
export { localModelLayer } from "../layers.js"
export { ModelRegistry } from "../host/ModelRegistry.js"
