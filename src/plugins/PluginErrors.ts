import { Schema } from "effect"

/** A plugin's `beforeRequest` refused the request, with the status and message it chose. */
export class PluginRejected extends Schema.TaggedError<PluginRejected>()("PluginRejected", {
  plugin: Schema.String,
  status: Schema.Int,
  reason: Schema.String,
  code: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return this.reason
  }
}

/** A fail-closed plugin's hook threw, timed out or returned garbage, so the request could not go on. */
export class PluginFailed extends Schema.TaggedError<PluginFailed>()("PluginFailed", {
  plugin: Schema.String,
  hook: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `The ${this.plugin} plugin's ${this.hook} hook failed (${this.reason}), and it fails closed`
  }
}

/** A plugin could not be loaded or set up at start. */
export class PluginLoadFailed extends Schema.TaggedError<PluginLoadFailed>()("PluginLoadFailed", {
  source: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `plugin ${this.source}: ${this.reason}`
  }
}

/** No plugin route at this path. */
export class PluginRouteNotFound extends Schema.TaggedError<PluginRouteNotFound>()("PluginRouteNotFound", {
  path: Schema.String
}) {
  override get message(): string {
    return `No plugin route at ${this.path}`
  }
}
