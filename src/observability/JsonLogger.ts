import { Cause, Context, Effect, FiberRef, FiberRefs, HashSet, Layer, Logger, LogLevel, Option, Tracer } from "effect"

/** Annotation and field names whose values are credentials: replaced, whatever logged them. */
const secretKey = /^(authorization|proxy-authorization|cookie|set-cookie|x-api-key|api[-_]?key|password|secret|token)$/i
const bearer = /^\s*bearer\s/i
const redacted = "[redacted]"

/** A JSON replacer that keeps credentials out, turns errors into plain objects, and breaks cycles. */
const safeReplacer = () => {
  const seen = new WeakSet<object>()
  return (key: string, value: unknown): unknown => {
    if (key !== "" && secretKey.test(key)) return redacted
    if (typeof value === "string") return bearer.test(value) ? redacted : value
    if (typeof value === "bigint") return value.toString()
    if (typeof value !== "object" || value === null) return value
    if (seen.has(value)) return "[circular]"
    seen.add(value)
    if (value instanceof Error) return { ...value, name: value.name, message: value.message }
    return value
  }
}

/** Fields a reader looks for first, in this order; the rest follow as they came. */
const leadingFields = ["time", "level", "msg", "requestId", "traceId", "spanId", "model", "status"]

const ordered = (entry: Record<string, unknown>): Record<string, unknown> => {
  const result: Record<string, unknown> = {}
  for (const key of leadingFields) if (key in entry) result[key] = entry[key]
  for (const key of Object.keys(entry)) if (!(key in result)) result[key] = entry[key]
  return result
}

const messageText = (message: unknown): { readonly msg: unknown; readonly details?: unknown } => {
  const parts = Array.isArray(message) ? message : [message]
  const [first, ...rest] = parts
  const msg = typeof first === "string" ? first : first instanceof Error ? first.message : first
  const details = typeof first === "string" ? rest : parts
  return details.length === 0 ? { msg } : { msg, details: details.length === 1 ? details[0] : details }
}

/**
 * One JSON object per line: `time`, `level`, `msg`, the log annotations as top-level fields, the `traceId` and `spanId`
 * of the current span, and `cause` for failures. Credentials are redacted by field name and `Bearer` prefix.
 */
export const makeJsonLogger = (write: (line: string) => void): Logger.Logger<unknown, void> =>
  Logger.make(({ annotations, cause, context, date, logLevel, message }) => {
    const entry: Record<string, unknown> = { time: date.toISOString(), level: logLevel.label.toLowerCase(), ...messageText(message) }
    for (const [key, value] of annotations) entry[key] = value
    if (entry.traceId === undefined) {
      const span = Context.getOption(FiberRefs.getOrDefault(context, FiberRef.currentContext), Tracer.ParentSpan)
      if (Option.isSome(span)) {
        entry.traceId = span.value.traceId
        entry.spanId = span.value.spanId
      }
    }
    if (!Cause.isEmpty(cause)) entry.cause = Cause.pretty(cause, { renderErrorCause: true })
    write(JSON.stringify(ordered(entry), safeReplacer()))
  })

/** Log levels as `--log-level` spells them. */
export const logLevelNames = ["all", "trace", "debug", "info", "warn", "error", "fatal", "none"] as const
export type LogLevelName = (typeof logLevelNames)[number]

const levels: Record<LogLevelName, LogLevel.LogLevel> = {
  all: LogLevel.All,
  trace: LogLevel.Trace,
  debug: LogLevel.Debug,
  info: LogLevel.Info,
  warn: LogLevel.Warning,
  error: LogLevel.Error,
  fatal: LogLevel.Fatal,
  none: LogLevel.None
}

export const logLevelOf = (name: LogLevelName): LogLevel.LogLevel => levels[name]

export interface LoggingOptions {
  readonly level: LogLevelName
  /** `json` for machines (the default), `pretty` for a person at a terminal. */
  readonly format: "json" | "pretty"
  /** Where JSON lines go; standard output by default. */
  readonly write?: ((line: string) => void) | undefined
}

/**
 * Replaces Effect's default logger, and the pretty one `runMain` installs in its place, with Weft's; sets the minimum
 * level. Other loggers (the one that records logs as span events) stay.
 */
export const JsonLogger = {
  layer: (options: LoggingOptions): Layer.Layer<never> => {
    const logger = options.format === "pretty"
      ? Logger.prettyLoggerDefault
      : makeJsonLogger(options.write ?? ((line) => process.stdout.write(`${line}\n`)))
    return Layer.merge(
      Layer.scopedDiscard(
        Effect.locallyScopedWith(FiberRef.currentLoggers, (loggers) =>
          loggers.pipe(HashSet.remove(Logger.defaultLogger), HashSet.remove(Logger.prettyLoggerDefault), HashSet.add(logger)))
      ),
      Logger.minimumLogLevel(logLevelOf(options.level))
    )
  }
}
