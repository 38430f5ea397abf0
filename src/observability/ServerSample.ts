import { Clock, Effect } from "effect"
import { ModelRegistry } from "../host/ModelRegistry.js"
import type { ModelStatus } from "../host/ModelRegistry.js"
import type { Priority } from "../scheduler/GenerationRequest.js"
import type { AdminStats } from "./AdminStats.js"
import { ProcessMetrics } from "./ProcessMetrics.js"
import type { ProcessStats } from "./ProcessMetrics.js"
import { requestLogFields } from "./RequestLog.js"

/** One sequence slot as the dashboard shows it. */
export interface SlotView {
  readonly slot: number
  readonly state: "idle" | "running" | "quarantined"
  /** Tokens in the slot's KV: the prefix an idle slot keeps for reuse, or the cells the running request holds. */
  readonly tokens: number
  readonly requestId: string | null
  /** Tokens the running request has generated so far. */
  readonly completionTokens: number | null
}

/** A queued request, oldest first. */
export interface QueuedView {
  readonly id: string
  readonly priority: Priority
  readonly ageMs: number
}

/** One model: its state and, once loaded, its numbers, slots, queue and last requests (newest first). */
export interface ModelView {
  readonly id: string | null
  readonly state: "loading" | "ready" | "failed" | "draining"
  readonly message?: string
  readonly stats?: AdminStats
  readonly slots?: ReadonlyArray<SlotView>
  readonly queue?: { readonly byPriority: Readonly<Record<Priority, number>>; readonly requests: ReadonlyArray<QueuedView> }
  readonly recent?: ReadonlyArray<Record<string, unknown>>
}

/** Everything the dashboard and the alert rules read, taken at one moment (`at`, `Clock` milliseconds). */
export interface ServerSample {
  readonly at: number
  readonly models: ReadonlyArray<ModelView>
  readonly process: ProcessStats
}

/** How many finished requests each model's view lists. */
const recentShown = 20

const stateOf = (model: ModelStatus): ModelView["state"] =>
  model.draining ? "draining" : model.state._tag === "Ready" ? "ready" : model.state._tag === "Loading" ? "loading" : "failed"

const viewOf = (model: ModelStatus) =>
  Effect.gen(function*() {
    const base = { id: model.id ?? null, state: stateOf(model) }
    if (model.state._tag === "Failed") return { ...base, message: model.state.message } satisfies ModelView
    if (model.state._tag !== "Ready") return base satisfies ModelView
    const { metrics, scheduler } = model.state.engine
    const stats = yield* metrics.adminStats()
    const [snapshot, schedulerStats] = yield* Effect.all([scheduler.inspect, scheduler.stats])
    const pool = schedulerStats.slots
    const running = new Map(snapshot.running.map((request) => [request.id, request]))
    const slots = Array.from({ length: pool.total }, (_, slot): SlotView => {
      const holder = pool.holders.find((one) => one.slot === slot)
      if (holder !== undefined) {
        const request = running.get(holder.requestId)
        return { slot, state: "running", tokens: holder.cells, requestId: holder.requestId, completionTokens: request?.completionTokens ?? 0 }
      }
      const cached = pool.cached.find((one) => one.slot === slot)
      const state = pool.quarantined.includes(slot) ? "quarantined" : "idle"
      return { slot, state, tokens: cached?.tokens ?? 0, requestId: null, completionTokens: null }
    })
    const byPriority: Record<Priority, number> = { high: 0, normal: 0, low: 0 }
    for (const request of snapshot.queued) byPriority[request.priority] += 1
    return {
      ...base,
      stats,
      slots,
      queue: {
        byPriority,
        requests: snapshot.queued.map((request) => ({ id: request.id, priority: request.priority, ageMs: request.ageMs }))
      },
      recent: snapshot.recent.slice(0, recentShown).map((record) => requestLogFields(stats.model, record))
    } satisfies ModelView
  })

/** Reads every model's state and numbers and the process's, at once: what `/admin/events` streams and alerts evaluate. */
export const sampleServer: Effect.Effect<ServerSample, never, ModelRegistry | ProcessMetrics> = Effect.gen(function*() {
  const process = yield* Effect.flatMap(ProcessMetrics, (metrics) => metrics.sample())
  const models = yield* Effect.flatMap(ModelRegistry, (registry) => registry.models)
  const views = yield* Effect.forEach(models, viewOf)
  return { at: yield* Clock.currentTimeMillis, models: views, process }
})
