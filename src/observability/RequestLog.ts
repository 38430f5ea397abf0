import { Context, Effect, Layer, Option, PubSub, Queue } from "effect"
import { Backend } from "../engine/Backend.js"
import { isTerminal, outcomeLabels } from "../scheduler/RequestLifecycle.js"
import type { RequestRecord } from "../scheduler/RequestLifecycle.js"
import { RequestScheduler } from "../scheduler/RequestScheduler.js"
import type { SchedulerEvent } from "../scheduler/RequestScheduler.js"

export interface RequestLogSettings {
  /** Adds the prompt and completion text to each line; off by default, since prompts may hold anything. */
  readonly logText: boolean
}

export class RequestLogConfig extends Context.Tag("weft/RequestLogConfig")<RequestLogConfig, RequestLogSettings>() {
  static readonly defaults: RequestLogSettings = { logText: false }
  static layer = (settings: Partial<RequestLogSettings> = {}): Layer.Layer<RequestLogConfig> =>
    Layer.succeed(RequestLogConfig, { ...RequestLogConfig.defaults, ...settings })
}

const since = (from: number | undefined, to: number | undefined) =>
  from === undefined || to === undefined ? null : to - from

/** The fields of a request's one log line: identity, outcome, tokens and timings; never its text unless asked. */
export const requestLogFields = (model: string, record: RequestRecord): Record<string, unknown> => ({
  ...record.annotations,
  requestId: record.annotations?.requestId ?? record.id,
  generationId: record.id,
  traceId: record.traceId,
  spanId: record.spanId,
  model,
  status: isTerminal(record.state) ? outcomeLabels[record.state] : undefined,
  finishReason: record.finishReason ?? null,
  priority: record.priority,
  promptTokens: record.promptTokens,
  completionTokens: record.completionTokens,
  cachedTokens: record.cachedTokens ?? 0,
  queueMs: since(record.enqueuedAt, record.startedAt ?? (record.state === "Rejected" ? undefined : record.finishedAt)),
  ttftMs: since(record.enqueuedAt, record.firstTokenAt),
  totalMs: since(record.enqueuedAt, record.finishedAt),
  ...(record.timeoutStage === undefined ? {} : { timeoutStage: record.timeoutStage }),
  ...(record.cancelReason === undefined ? {} : { cancelReason: record.cancelReason }),
  ...(record.detail === undefined ? {} : { detail: record.detail })
})

/**
 * Writes one structured log line per finished request (completed, failed, timed out, cancelled or rejected), from the
 * scheduler's lifecycle events: the submitter's request id and trace, status, finish reason, tokens and timings.
 */
export class RequestLog extends Effect.Service<RequestLog>()("weft/RequestLog", {
  scoped: Effect.gen(function*() {
    const scheduler = yield* RequestScheduler
    const backend = yield* Backend
    const settings = Option.getOrElse(yield* Effect.serviceOption(RequestLogConfig), () => RequestLogConfig.defaults)
    const model = scheduler.modelInfo.id
    // Prompt and generated tokens of live requests, kept only when text is logged. A request's tokens may come before
    // its admission event does (see `TokenObserver`), so each has a map of its own.
    const prompts = new Map<string, ReadonlyArray<number>>()
    const completions = new Map<string, Array<number>>()

    const textFields = (id: string) => {
      const prompt = prompts.get(id)
      const completion = completions.get(id) ?? []
      prompts.delete(id)
      completions.delete(id)
      if (prompt === undefined) return {}
      return { promptText: backend.detokenize(prompt), completionText: backend.detokenize(completion) }
    }

    const handle = (event: SchedulerEvent): Effect.Effect<void> => {
      if (event._tag !== "Transition") return Effect.void
      const { record } = event
      if (settings.logText && event.prompt !== undefined && event.to === "Queued") {
        prompts.set(record.id, event.prompt)
      }
      if (event.to === "Queued" || event.to === "Running") return Effect.void
      const fields = {
        ...requestLogFields(model, record),
        ...(settings.logText ? (event.to === "Rejected" ? { promptText: backend.detokenize(event.prompt ?? []) } : textFields(record.id)) : {})
      }
      const log = event.to === "Failed"
        ? Effect.logError("request failed")
        : event.to === "TimedOut"
        ? Effect.logWarning("request timed out")
        : event.to === "Rejected"
        ? Effect.logWarning("request rejected")
        : event.to === "Cancelled"
        ? Effect.logInfo("request cancelled")
        : Effect.logInfo("request completed")
      return Effect.annotateLogs(log, fields)
    }

    if (settings.logText) {
      yield* scheduler.observeTokens(({ record, token }) => {
        const completion = completions.get(record.id)
        if (completion === undefined) completions.set(record.id, [token])
        else completion.push(token)
      })
    }
    const subscription = yield* PubSub.subscribe(scheduler.events)
    yield* Queue.takeBetween(subscription, 1, 1024).pipe(
      Effect.flatMap((batch) => Effect.forEach(batch, handle, { discard: true })),
      Effect.forever,
      Effect.forkScoped
    )
    return {} as const
  })
}) {}
