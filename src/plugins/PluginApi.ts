/**
 * What a plugin is: an ES module whose default export (or `plugin` export) is a `WeftPlugin`, loaded with
 * `--plugin PATH`; programs embedding Weft pass the objects themselves (see `Plugins.layer`). Every hook may return
 * a value or a promise of one, and runs under the plugin's time limit.
 */
export interface WeftPlugin {
  /** Lower-case letters, digits and dashes; its routes live under `/plugins/<name>/`. */
  readonly name: string
  readonly version: string
  /** When a hook of this plugin throws, times out or returns garbage, fail the request instead of going on without it. */
  readonly failClosed?: boolean
  /** Longest time one hook call may take (default 1000 ms). */
  readonly timeoutMs?: number
  /** Runs once at start; the server does not start if it fails. */
  readonly setup?: () => unknown
  /** Runs once at shutdown. */
  readonly dispose?: () => unknown
  /** Before a request is validated: inspect it, rewrite its body, or reject it. */
  readonly beforeRequest?: (request: PluginRequest) => BeforeResult | Promise<BeforeResult>
  /** For each choice of a generation: a transform of its text, fed every delta in order, then `end`. */
  readonly transformText?: (context: PluginTextContext) => TextTransform | Promise<TextTransform>
  /** After a generation ended (or was cancelled): its usage and outcome. */
  readonly afterRequest?: (outcome: PluginOutcome) => unknown
  /** Extra routes, keyed `"GET /path"` (or `"/path"` for any method), served at `/plugins/<name>/path`. */
  readonly routes?: Readonly<Record<string, PluginRouteHandler>>
}

export interface PluginRequest {
  readonly endpoint: "chat" | "completions"
  /** The JSON body as sent (or as an earlier plugin rewrote it). */
  readonly body: unknown
  /** The caller's tenant; `null` without a key. */
  readonly tenant: string | null
}

/** Nothing (go on), a replacement body, or a refusal that reaches the client as an OpenAI error. */
export type BeforeResult =
  | undefined
  | null
  | void
  | { readonly body: Record<string, unknown> }
  | { readonly reject: { readonly status: number; readonly message: string; readonly code?: string } }

export interface PluginTextContext {
  readonly requestId: string
  readonly model: string
  readonly choice: number
}

/** Returns the text to send for each delta; may hold some back (a match that may continue) and give it from `end`. */
export interface TextTransform {
  readonly write: (text: string) => string | Promise<string>
  readonly end?: () => string | Promise<string>
}

export interface PluginOutcome {
  readonly requestId: string
  readonly endpoint: "chat" | "completions"
  readonly model: string
  /** `completed` when every choice ended normally, `cancelled` when the client left first, else `failed`. */
  readonly outcome: "completed" | "failed" | "cancelled"
  readonly finishReasons: ReadonlyArray<string>
  readonly usage: { readonly promptTokens: number; readonly completionTokens: number }
}

export interface PluginRouteRequest {
  readonly method: string
  /** The path below `/plugins/<name>`, starting with `/`. */
  readonly path: string
  readonly query: Readonly<Record<string, string>>
  readonly headers: Readonly<Record<string, string | undefined>>
  /** The JSON body of a request that sent one. */
  readonly body: unknown
}

export interface PluginRouteReply {
  readonly status?: number
  readonly headers?: Readonly<Record<string, string>>
  /** A string is sent as text, anything else as JSON. */
  readonly body?: unknown
}

export type PluginRouteHandler = (request: PluginRouteRequest) => PluginRouteReply | Promise<PluginRouteReply>
