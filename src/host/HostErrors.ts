import { Schema } from "effect"

/** The model is still being generated or loaded; requests are answered 503 until it is ready. */
export class ModelLoading extends Schema.TaggedError<ModelLoading>()("ModelLoading", {}) {
  override get message(): string {
    return "The model is still loading; retry shortly"
  }
}

/** The request names a model this server does not serve. */
export class ModelNotFound extends Schema.TaggedError<ModelNotFound>()("ModelNotFound", {
  model: Schema.String
}) {
  override get message(): string {
    return `The model \`${this.model}\` does not exist or you do not have access to it.`
  }
}

/** The model is being unloaded: it takes no new requests. */
export class ModelUnloading extends Schema.TaggedError<ModelUnloading>()("ModelUnloading", {
  model: Schema.String
}) {
  override get message(): string {
    return `The model \`${this.model}\` is being unloaded and takes no new requests`
  }
}

/** A model with this id is already served (or loading). */
export class ModelAlreadyServed extends Schema.TaggedError<ModelAlreadyServed>()("ModelAlreadyServed", {
  model: Schema.String
}) {
  override get message(): string {
    return `A model with id \`${this.model}\` is already served; unload it first`
  }
}
