import { Context, Effect, Layer, Metric, Ref, Schema } from "effect"
import type { Scope } from "effect"
import * as os from "node:os"
import { WeftMetrics } from "../observability/WeftMetrics.js"

/**
 * The budget and how pressure is measured. The budget is for what serving adds to the bare process: what models and
 * contexts commit, and RSS beyond the process's own footprint at start (the baseline).
 */
export interface MemorySettings {
  /** Bytes models and contexts may commit, and RSS may grow beyond the baseline, before loads and requests are refused. */
  readonly limitBytes: number
  /** Under pressure, new requests are refused until use falls below this share of the limit (default 0.9). */
  readonly lowWatermark?: number | undefined
  /** The resident set size now; default the process's own, read at most every 100 ms (tests drive pressure through it). */
  readonly measureRss?: (() => number) | undefined
  /** RSS not counted against the budget; default RSS when the manager starts, before any model loads. */
  readonly baselineBytes?: number | undefined
}

/** The default budget: 80% of the memory this process may use (its cgroup limit when it has one, else the machine's). */
export const defaultMemoryLimit = (): number => {
  const constrained = typeof process.constrainedMemory === "function" ? process.constrainedMemory() : 0
  const total = constrained > 0 && constrained < os.totalmem() ? constrained : os.totalmem()
  return Math.floor(total * 0.8)
}

/**
 * The process's resident set size, read at most every `maxAgeMs`. Every request's admission asks for it, and in a busy
 * server the read (`/proc/self/stat`) took 0.6–1 ms of the request's time where an idle process reads it in 0.02 ms.
 */
export const recentRss = (
  maxAgeMs: number,
  read: () => number = () => process.memoryUsage.rss(),
  now: () => number = () => performance.now()
): () => number => {
  let readAt = Number.NEGATIVE_INFINITY
  let bytes = 0
  return () => {
    const at = now()
    if (at - readAt >= maxAgeMs) {
      bytes = read()
      readAt = at
    }
    return bytes
  }
}

/** What one holder commits: named parts (weights, KV cache and compute buffers, an adapter's context, …). */
export interface MemoryCharge {
  /** Unique while held, e.g. `model tiny` or `adapter tiny:a`. */
  readonly label: string
  /** The model the memory belongs to, for the advice that names what to unload. */
  readonly model?: string | undefined
  /** Bytes by part; their sum is what is committed. */
  readonly parts: Readonly<Record<string, number>>
}

/** One held reservation as the account lists it. */
export interface MemoryReservation extends MemoryCharge {
  readonly bytes: number
}

/** What `GET /admin/memory` shows. */
export interface MemoryAccount {
  readonly limitBytes: number
  readonly lowWatermarkBytes: number
  readonly committedBytes: number
  /** What is left to commit: limit minus committed. */
  readonly availableBytes: number
  /** As the OS reports it now. */
  readonly rssBytes: number
  /** RSS when the server started, before any model: not counted against the limit. */
  readonly baselineRssBytes: number
  /** RSS beyond the baseline: what pressure is measured on. */
  readonly usedBytes: number
  /** New requests are refused until RSS falls below the low watermark. */
  readonly underPressure: boolean
  readonly reservations: ReadonlyArray<MemoryReservation>
}

/** A reservation would take the committed memory past the budget; nothing was reserved. */
export class MemoryBudgetExceeded extends Schema.TaggedError<MemoryBudgetExceeded>()("MemoryBudgetExceeded", {
  label: Schema.String,
  requestedBytes: Schema.Number,
  committedBytes: Schema.Number,
  limitBytes: Schema.Number,
  /** The reservations already held, largest first. */
  committed: Schema.Array(Schema.Struct({ label: Schema.String, model: Schema.UndefinedOr(Schema.String), bytes: Schema.Number }))
}) {
  override get message(): string {
    return `${this.label} needs ${formatBytes(this.requestedBytes)}, but ${formatBytes(this.committedBytes)} of the ` +
      `${formatBytes(this.limitBytes)} memory limit is committed; ${formatBytes(Math.max(0, this.limitBytes - this.committedBytes))} is free`
  }
}

/** The process uses more memory than its budget allows; new requests are refused until use falls below the low watermark. */
export class MemoryPressure extends Schema.TaggedError<MemoryPressure>()("MemoryPressure", {
  usedBytes: Schema.Number,
  limitBytes: Schema.Number,
  lowWatermarkBytes: Schema.Number,
  retryAfterSeconds: Schema.Number
}) {
  override get message(): string {
    return `The server is short of memory (${formatBytes(this.usedBytes)} in use beyond its footprint at start, limit ` +
      `${formatBytes(this.limitBytes)}); ` +
      `retry after ${this.retryAfterSeconds} s`
  }
}

/** `12.3 MiB`. */
export const formatBytes = (bytes: number): string => {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]
  let value = bytes
  let unit = 0
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit += 1
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`
}

export interface MemoryManagerShape {
  /**
   * Commits `charge` for as long as the caller's scope is open, or fails with `MemoryBudgetExceeded` (nothing reserved)
   * when it would take the committed total past the limit. Check and commit are one step.
   */
  readonly reserve: (charge: MemoryCharge) => Effect.Effect<MemoryReservation, MemoryBudgetExceeded, Scope.Scope>
  /** The account now, with RSS measured now. */
  readonly account: Effect.Effect<MemoryAccount>
  /**
   * Lets a new request in, or refuses it with `MemoryPressure`. When use (RSS beyond the baseline) reaches the limit,
   * every registered relief (cached prefixes) runs once; requests are refused until use falls below the low watermark.
   */
  readonly admit: Effect.Effect<void, MemoryPressure>
  /** Registers what to free under pressure (e.g. a model's cached prefixes) while the caller's scope is open. */
  readonly onPressure: (label: string, relieve: Effect.Effect<void>) => Effect.Effect<void, never, Scope.Scope>
}

const retryAfterSeconds = 5

const byLabel = <A extends { readonly label: string }>(list: ReadonlyArray<A>, label: string) => list.filter((entry) => entry.label !== label)

/**
 * The memory budget of the process: what models and contexts have committed (node-llama-cpp's estimates, reserved
 * before anything is loaded), RSS as measured, and admission against both. The reservations `Ref` is written only by
 * `reserve` and its finalizer; `pressure` only by `admit`.
 */
export class MemoryManager extends Context.Tag("weft/MemoryManager")<MemoryManager, MemoryManagerShape>() {
  static layer = (settings: MemorySettings): Layer.Layer<MemoryManager> =>
    Layer.effect(
      MemoryManager,
      Effect.gen(function*() {
        const limitBytes = settings.limitBytes
        const lowWatermarkBytes = Math.floor(limitBytes * (settings.lowWatermark ?? 0.9))
        const measureRss = settings.measureRss ?? recentRss(100)
        const baselineRssBytes = settings.baselineBytes ?? measureRss()
        const measureUse = () => Math.max(0, measureRss() - baselineRssBytes)
        const reservations = yield* Ref.make<ReadonlyArray<MemoryReservation>>([])
        const reliefs = yield* Ref.make<ReadonlyArray<{ readonly label: string; readonly relieve: Effect.Effect<void> }>>([])
        const pressure = yield* Ref.make(false)

        const committedOf = (list: ReadonlyArray<MemoryReservation>) => list.reduce((sum, entry) => sum + entry.bytes, 0)

        const reserve = (charge: MemoryCharge) =>
          Effect.acquireRelease(
            Effect.flatMap(
              Ref.modify(reservations, (list): readonly [MemoryReservation | MemoryBudgetExceeded, ReadonlyArray<MemoryReservation>] => {
                const reservation: MemoryReservation = { ...charge, bytes: Object.values(charge.parts).reduce((sum, part) => sum + part, 0) }
                const committedBytes = committedOf(list)
                if (committedBytes + reservation.bytes <= limitBytes) return [reservation, [...list, reservation]]
                const refusal = new MemoryBudgetExceeded({
                  label: charge.label,
                  requestedBytes: reservation.bytes,
                  committedBytes,
                  limitBytes,
                  committed: [...list].sort((a, b) => b.bytes - a.bytes).map(({ bytes, label, model }) => ({ label, model, bytes }))
                })
                return [refusal, list]
              }),
              (result): Effect.Effect<MemoryReservation, MemoryBudgetExceeded> =>
                result instanceof MemoryBudgetExceeded ? Effect.fail(result) : Effect.succeed(result)
            ),
            (reservation) =>
              Effect.zipRight(
                Ref.update(reservations, (list) => list.filter((entry) => entry !== reservation)),
                // A released holder's gauges drop to zero rather than keep their last value.
                Effect.forEach(Object.keys(reservation.parts), (part) => Metric.set(reservedGauge(reservation.label, part), 0), { discard: true })
              )
          )

        const account = Effect.map(Effect.zip(Ref.get(reservations), Ref.get(pressure)), ([list, underPressure]): MemoryAccount => {
          const committedBytes = committedOf(list)
          const rssBytes = measureRss()
          return {
            limitBytes,
            lowWatermarkBytes,
            committedBytes,
            availableBytes: Math.max(0, limitBytes - committedBytes),
            rssBytes,
            baselineRssBytes,
            usedBytes: Math.max(0, rssBytes - baselineRssBytes),
            underPressure,
            reservations: list
          }
        })

        const relieveAll = Effect.flatMap(Ref.get(reliefs), (list) =>
          Effect.forEach(list, (relief) => relief.relieve, { discard: true }).pipe(
            Effect.zipRight(Effect.logWarning("memory pressure: cached prefixes evicted").pipe(
              Effect.annotateLogs({ limitBytes, relieved: list.map((relief) => relief.label) })
            ))
          ))

        const refusal = (usedBytes: number) => new MemoryPressure({ usedBytes, limitBytes, lowWatermarkBytes, retryAfterSeconds })

        const admit = Effect.gen(function*() {
          const used = measureUse()
          if (yield* Ref.get(pressure)) {
            if (used >= lowWatermarkBytes) return yield* refusal(used)
            yield* Ref.set(pressure, false)
            yield* Effect.logInfo("memory pressure over").pipe(Effect.annotateLogs({ usedBytes: used, lowWatermarkBytes }))
            return
          }
          if (used < limitBytes) return
          // Cached prefixes go first; requests are refused only when that was not enough.
          yield* relieveAll
          const after = measureUse()
          if (after < limitBytes) return
          yield* Ref.set(pressure, true)
          return yield* refusal(after)
        })

        const onPressure = (label: string, relieve: Effect.Effect<void>) =>
          Effect.acquireRelease(
            Ref.update(reliefs, (list) => [...byLabel(list, label), { label, relieve }]),
            () => Ref.update(reliefs, (list) => byLabel(list, label))
          )

        return { reserve, account, admit, onPressure } satisfies MemoryManagerShape
      })
    )
}

const reservedGauge = (holder: string, part: string) => Metric.tagged(Metric.tagged(WeftMetrics.memoryReserved, "holder", holder), "part", part)

/** Sets the memory gauges of `/metrics` from the account. */
export const sampleMemoryMetrics = (memory: MemoryManagerShape) =>
  Effect.flatMap(memory.account, (account) =>
    Effect.all([
      Metric.set(WeftMetrics.memoryLimit, account.limitBytes),
      Metric.set(WeftMetrics.memoryCommitted, account.committedBytes),
      Metric.set(WeftMetrics.memoryUnderPressure, account.underPressure ? 1 : 0),
      Effect.forEach(account.reservations, (reservation) =>
        Effect.forEach(Object.entries(reservation.parts), ([part, bytes]) =>
          Metric.set(reservedGauge(reservation.label, part), bytes)))
    ], { discard: true }))
