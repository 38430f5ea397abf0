import { Clock, Context, Duration, Effect, Either, Layer, Option, Ref, Stream } from "effect"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { currentPrincipal } from "../identity/currentPrincipal.js"
import { GenerationEvent } from "../scheduler/GenerationRequest.js"
import type { PluginOutcome, PluginRequest, PluginRouteReply, PluginRouteRequest, TextTransform, WeftPlugin } from "./PluginApi.js"
import { PluginFailed, PluginLoadFailed, PluginRejected, PluginRouteNotFound } from "./PluginErrors.js"

/** Where a plugin comes from: an ES module file (`--plugin PATH`), or an object a program passes in. */
export type PluginSource = { readonly _tag: "Path"; readonly path: string } | { readonly _tag: "Object"; readonly plugin: WeftPlugin }

export class PluginsConfig extends Context.Tag("weft/PluginsConfig")<PluginsConfig, ReadonlyArray<PluginSource>>() {
  static layer = (sources: ReadonlyArray<PluginSource> = []): Layer.Layer<PluginsConfig> => Layer.succeed(PluginsConfig, sources)
}

/** Calls, failures and time of one hook of one plugin, as `GET /admin/plugins` shows them. */
export interface HookStats {
  readonly calls: number
  readonly errors: number
  readonly timeouts: number
  readonly totalMs: number
  readonly maxMs: number
}

const defaultTimeoutMs = 1000
const namePattern = /^[a-z0-9][a-z0-9-]{0,63}$/
const hookNames = ["beforeRequest", "transformText", "afterRequest", "setup", "dispose"] as const

interface Loaded {
  readonly plugin: WeftPlugin
  readonly source: string
  readonly timeoutMs: number
  readonly failClosed: boolean
}

const sourceName = (source: PluginSource) => (source._tag === "Path" ? source.path : "(object)")

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value)

/** Why `value` is not a usable plugin, or `undefined` when it is. */
const shapeProblem = (value: unknown): string | undefined => {
  if (!isRecord(value)) return "the module exports no plugin object (export default { name, version, … })"
  if (typeof value["name"] !== "string" || !namePattern.test(value["name"])) return "its name must be lower-case letters, digits and dashes"
  if (typeof value["version"] !== "string" || value["version"] === "") return "it has no version"
  const timeout = value["timeoutMs"]
  if (timeout !== undefined && (typeof timeout !== "number" || !(timeout > 0 && timeout <= 60_000))) return "timeoutMs must be a number of milliseconds up to 60000"
  for (const hook of hookNames) {
    if (value[hook] !== undefined && typeof value[hook] !== "function") return `${hook} must be a function`
  }
  const routes = value["routes"]
  if (routes !== undefined && (!isRecord(routes) || Object.values(routes).some((handler) => typeof handler !== "function"))) {
    return "routes must map \"METHOD /path\" to functions"
  }
  return undefined
}

const reasonOf = (error: unknown): string => (error instanceof Error ? `${error.name}: ${error.message}` : `threw ${String(error)}`).slice(0, 300)

/** What `beforeRequest` may return; anything else is garbage. */
const checkBefore = (value: unknown): Either.Either<
  { readonly _tag: "Keep" } | { readonly _tag: "Body"; readonly body: Record<string, unknown> } | { readonly _tag: "Reject"; readonly status: number; readonly message: string; readonly code: string | undefined },
  string
> => {
  if (value === undefined || value === null) return Either.right({ _tag: "Keep" })
  if (isRecord(value) && isRecord(value["body"])) return Either.right({ _tag: "Body", body: value["body"] })
  const reject = isRecord(value) ? value["reject"] : undefined
  if (isRecord(reject) && Number.isInteger(reject["status"]) && (reject["status"] as number) >= 400 && (reject["status"] as number) <= 499 && typeof reject["message"] === "string") {
    const code = typeof reject["code"] === "string" && /^[a-z0-9_]{1,64}$/.test(reject["code"]) ? reject["code"] : undefined
    return Either.right({ _tag: "Reject", status: reject["status"] as number, message: reject["message"].slice(0, 1000), code })
  }
  return Either.left("returned garbage: expected nothing, { body: {…} } or { reject: { status: 4xx, message } }")
}

const checkText = (value: unknown): Either.Either<string, string> =>
  typeof value === "string" ? Either.right(value) : Either.left("returned garbage: expected a string")

const checkTransform = (value: unknown): Either.Either<TextTransform, string> =>
  isRecord(value) && typeof value["write"] === "function" && (value["end"] === undefined || typeof value["end"] === "function")
    ? Either.right(value as unknown as TextTransform)
    : Either.left("returned garbage: expected { write(text), end?() }")

const checkReply = (value: unknown): Either.Either<PluginRouteReply, string> => {
  if (!isRecord(value)) return Either.left("returned garbage: expected { status?, headers?, body? }")
  const status = value["status"]
  if (status !== undefined && !(Number.isInteger(status) && (status as number) >= 200 && (status as number) <= 599)) return Either.left("returned garbage: bad status")
  const headers = value["headers"]
  if (headers !== undefined && (!isRecord(headers) || Object.values(headers).some((one) => typeof one !== "string"))) return Either.left("returned garbage: bad headers")
  return Either.right(value as PluginRouteReply)
}

const anything = (value: unknown): Either.Either<unknown, string> => Either.right(value)

const loadSource = (source: PluginSource) =>
  Effect.gen(function*() {
    const value = source._tag === "Object" ? source.plugin : yield* Effect.tryPromise({
      try: async () => {
        const module = (await import(pathToFileURL(path.resolve(source.path)).href)) as Record<string, unknown>
        return module["default"] ?? module["plugin"]
      },
      catch: (error) => new PluginLoadFailed({ source: source.path, reason: reasonOf(error) })
    })
    const problem = shapeProblem(value)
    if (problem !== undefined) return yield* new PluginLoadFailed({ source: sourceName(source), reason: problem })
    const plugin = value as WeftPlugin
    return { plugin, source: sourceName(source), timeoutMs: plugin.timeoutMs ?? defaultTimeoutMs, failClosed: plugin.failClosed === true } satisfies Loaded
  })

/**
 * The loaded plugins and their hooks. Each hook call runs under the plugin's time limit; one that throws, times out
 * or returns garbage is logged and counted, and the request goes on without it, unless the plugin fails closed (then
 * the request fails with `PluginFailed`). Plugins are set up in order at start and disposed in reverse at shutdown.
 */
export class Plugins extends Effect.Service<Plugins>()("weft/Plugins", {
  scoped: Effect.gen(function*() {
    const sources = Option.getOrElse(yield* Effect.serviceOption(PluginsConfig), () => [])
    /** Hook statistics by plugin, then hook; `call` is the only writer. */
    const stats = yield* Ref.make<Readonly<Record<string, Readonly<Record<string, HookStats>>>>>({})

    const record = (plugin: string, hook: string, ms: number, failure: "error" | "timeout" | undefined) =>
      Ref.update(stats, (all) => {
        const before = all[plugin]?.[hook] ?? { calls: 0, errors: 0, timeouts: 0, totalMs: 0, maxMs: 0 }
        const after: HookStats = {
          calls: before.calls + 1,
          errors: before.errors + (failure === "error" ? 1 : 0),
          timeouts: before.timeouts + (failure === "timeout" ? 1 : 0),
          totalMs: before.totalMs + ms,
          maxMs: Math.max(before.maxMs, ms)
        }
        return { ...all, [plugin]: { ...all[plugin], [hook]: after } }
      })

    /** Runs one hook call in isolation: its checked result, or why it failed (already logged and counted). */
    const call = <A>(loaded: Loaded, hook: string, run: () => unknown, check: (value: unknown) => Either.Either<A, string>) =>
      Effect.gen(function*() {
        const started = yield* Clock.currentTimeMillis
        const outcome = yield* Effect.tryPromise({ try: async () => run(), catch: reasonOf }).pipe(
          Effect.timeoutFail({ duration: Duration.millis(loaded.timeoutMs), onTimeout: () => `timed out after ${loaded.timeoutMs} ms` }),
          Effect.flatMap((value) => check(value)),
          Effect.either
        )
        const ms = (yield* Clock.currentTimeMillis) - started
        const failure = Either.isRight(outcome) ? undefined : outcome.left.startsWith("timed out") ? "timeout" as const : "error" as const
        yield* record(loaded.plugin.name, hook, ms, failure)
        if (Either.isLeft(outcome)) {
          yield* Effect.logWarning("plugin hook failed").pipe(
            Effect.annotateLogs({ plugin: loaded.plugin.name, hook, reason: outcome.left, failClosed: loaded.failClosed })
          )
        }
        return outcome
      })

    /** A hook's result; on failure, `None` (go on without it) or, for a fail-closed plugin, `PluginFailed`. */
    const guarded = <A>(loaded: Loaded, hook: string, run: () => unknown, check: (value: unknown) => Either.Either<A, string>) =>
      Effect.flatMap(call(loaded, hook, run, check), (outcome) =>
        Either.isRight(outcome)
          ? Effect.succeed(Option.some(outcome.right))
          : loaded.failClosed
          ? Effect.fail(new PluginFailed({ plugin: loaded.plugin.name, hook, reason: outcome.left }))
          : Effect.succeed(Option.none<A>()))

    const plugins: Array<Loaded> = []
    for (const source of sources) {
      const loaded = yield* loadSource(source)
      if (plugins.some((other) => other.plugin.name === loaded.plugin.name)) {
        return yield* new PluginLoadFailed({ source: loaded.source, reason: `a plugin named ${loaded.plugin.name} is already loaded` })
      }
      const { dispose, setup } = loaded.plugin
      yield* Effect.acquireRelease(
        setup === undefined ? Effect.void : Effect.flatMap(call(loaded, "setup", () => setup.call(loaded.plugin), anything), (outcome) =>
          Either.isLeft(outcome) ? new PluginLoadFailed({ source: loaded.source, reason: `setup failed: ${outcome.left}` }) : Effect.void),
        () => (dispose === undefined ? Effect.void : call(loaded, "dispose", () => dispose.call(loaded.plugin), anything))
      )
      plugins.push(loaded)
      yield* Effect.logInfo("plugin loaded").pipe(Effect.annotateLogs({ plugin: loaded.plugin.name, version: loaded.plugin.version, source: loaded.source }))
    }

    /** Runs every `beforeRequest` in order; the body as the last one left it, or the first refusal. */
    const beforeRequest = (endpoint: PluginRequest["endpoint"], sent: unknown) =>
      Effect.flatMap(currentPrincipal, (principal) => {
        const request: PluginRequest = { endpoint, body: sent, tenant: Option.getOrNull(Option.map(principal, (known) => known.tenant)) }
        return runBefore(request)
      })

    const runBefore = (request: PluginRequest) =>
      Effect.reduce(plugins, request.body, (body, loaded) => {
        const hook = loaded.plugin.beforeRequest
        if (hook === undefined) return Effect.succeed(body)
        return Effect.flatMap(guarded(loaded, "beforeRequest", () => hook.call(loaded.plugin, { ...request, body }), checkBefore), (result) => {
          if (Option.isNone(result) || result.value._tag === "Keep") return Effect.succeed(body)
          if (result.value._tag === "Body") return Effect.succeed<unknown>(result.value.body)
          return Effect.fail(new PluginRejected({ plugin: loaded.plugin.name, status: result.value.status, reason: result.value.message, code: result.value.code }))
        })
      })

    const textPlugins = plugins.filter((loaded) => loaded.plugin.transformText !== undefined)

    /**
     * One choice's events with its text passed through every `transformText` in order: each delta's text is written
     * to the transforms, and what they hold back comes out of `end` as one more delta just before `Finished`.
     */
    const transformText = <E>(events: Stream.Stream<GenerationEvent, E>, context: { readonly requestId: string; readonly model: string; readonly choice: number }) =>
      textPlugins.length === 0 ? events : Stream.unwrap(
        Effect.gen(function*() {
          // This stream's transforms; a fail-open one that fails is dropped for the rest of the stream.
          const active: Array<{ readonly loaded: Loaded; readonly transform: TextTransform }> = []
          for (const loaded of textPlugins) {
            const transform = yield* guarded(loaded, "transformText", () => loaded.plugin.transformText!.call(loaded.plugin, context), checkTransform)
            if (Option.isSome(transform)) active.push({ loaded, transform: transform.value })
          }
          const through = (text: string, ending: boolean) =>
            Effect.reduce([...active], text, (input, entry) => {
              const { loaded, transform } = entry
              const step = (run: () => unknown) =>
                Effect.map(guarded(loaded, ending ? "end" : "write", run, checkText), (output) => {
                  if (Option.isSome(output)) return output.value
                  active.splice(active.indexOf(entry), 1)
                  return input
                })
              if (!ending) return step(() => transform.write(input))
              const end = transform.end
              return Effect.flatMap(step(() => transform.write(input)), (written) =>
                end === undefined ? Effect.succeed(written) : Effect.map(step(() => end.call(transform)), (rest) => written + rest))
            })
          return Stream.mapConcatEffect(events, (event): Effect.Effect<ReadonlyArray<GenerationEvent>, E | PluginFailed> => {
            if (event._tag === "Delta") return Effect.map(through(event.text, false), (text) => [{ ...event, text }])
            if (event._tag !== "Finished") return Effect.succeed([event])
            return Effect.map(through("", true), (rest): ReadonlyArray<GenerationEvent> =>
              rest === "" ? [event] : [GenerationEvent.Delta({ text: rest, tokens: 0 }), event])
          })
        })
      )

    const afterPlugins = plugins.filter((loaded) => loaded.plugin.afterRequest !== undefined)

    /** The merged events of a request; when they end, however they end, every `afterRequest` gets the outcome. */
    const afterRequest = <A extends { readonly event: GenerationEvent }, E>(
      events: Stream.Stream<A, E>,
      context: { readonly requestId: string; readonly endpoint: PluginOutcome["endpoint"]; readonly model: string; readonly choices: number }
    ) => {
      if (afterPlugins.length === 0) return events
      const finished: Array<Extract<GenerationEvent, { _tag: "Finished" }>> = []
      const report = Effect.suspend(() => {
        const reasons = finished.map((event) => event.finishReason)
        const outcome: PluginOutcome = {
          ...context,
          outcome: reasons.length === context.choices && reasons.every((reason) => reason === "stop" || reason === "length")
            ? "completed"
            : reasons.some((reason) => reason === "error" || reason === "timeout") ? "failed" : "cancelled",
          finishReasons: reasons,
          usage: {
            promptTokens: finished.reduce((sum, event) => sum + event.usage.promptTokens, 0),
            completionTokens: finished.reduce((sum, event) => sum + event.usage.completionTokens, 0)
          }
        }
        // Off the response's path: a slow or failing hook never delays or breaks what the client gets.
        return Effect.forkDaemon(Effect.forEach(afterPlugins, (loaded) => call(loaded, "afterRequest", () => loaded.plugin.afterRequest!.call(loaded.plugin, outcome), anything), { discard: true }))
      })
      return events.pipe(
        Stream.tap(({ event }) => Effect.sync(() => {
          if (event._tag === "Finished") finished.push(event)
        })),
        Stream.ensuring(report)
      )
    }

    /** Serves `/plugins/<name>/<path>` from that plugin's routes. */
    const route = (name: string, request: PluginRouteRequest) =>
      Effect.gen(function*() {
        const loaded = plugins.find((one) => one.plugin.name === name)
        const routes = loaded?.plugin.routes ?? {}
        const handler = routes[`${request.method} ${request.path}`] ?? routes[request.path]
        if (loaded === undefined || handler === undefined) return yield* new PluginRouteNotFound({ path: `/plugins/${name}${request.path}` })
        const outcome = yield* call(loaded, "route", () => handler.call(loaded.plugin.routes, request), checkReply)
        if (Either.isLeft(outcome)) return yield* new PluginFailed({ plugin: name, hook: "route", reason: outcome.left })
        return outcome.right
      })

    /** Each plugin with its hooks, routes and per-hook statistics. */
    const list = Effect.map(Ref.get(stats), (all) =>
      plugins.map((loaded) => ({
        name: loaded.plugin.name,
        version: loaded.plugin.version,
        source: loaded.source,
        failClosed: loaded.failClosed,
        timeoutMs: loaded.timeoutMs,
        hooks: hookNames.filter((hook) => loaded.plugin[hook] !== undefined),
        routes: Object.keys(loaded.plugin.routes ?? {}),
        stats: Object.fromEntries(Object.entries(all[loaded.plugin.name] ?? {}).map(([hook, one]) => [hook, {
          calls: one.calls,
          errors: one.errors,
          timeouts: one.timeouts,
          meanMs: one.calls === 0 ? 0 : one.totalMs / one.calls,
          maxMs: one.maxMs
        }]))
      })))

    return { beforeRequest, transformText, afterRequest, route, list, count: plugins.length } as const
  })
}) {}
