import { Cause, Context, Effect, Exit, Layer, Option, Order, Schedule } from "effect"
import { restoreSession, saveSession, savedTokens, SessionKvConfig } from "../sessions/SessionKvFiles.js"
import { Backend, DecodeFailed } from "./Backend.js"

/** How released sequences are kept as reusable prefixes, and when they are evicted. */
export interface PrefixCacheSettings {
  /** Keep a released slot's KV cells as a cached prefix instead of erasing them. */
  readonly enabled: boolean
  /** Cached (not running) tokens allowed across all slots; `undefined` is no limit beyond the context. */
  readonly maxCachedTokens?: number | undefined
  /** Estimated KV bytes of cached tokens allowed; `undefined` is no limit. */
  readonly maxCachedBytes?: number | undefined
  /** Eviction starts once cached use crosses this fraction of a limit, and brings it back under. */
  readonly evictionThreshold: number
  /**
   * A new request takes a slot for a cached prefix of at least this many tokens even where another slot would keep the
   * running sequences' ids contiguous (see `chooseSlot`). A gap costs about as much per step as evaluating a few prompt
   * tokens again; over a generation of tens of tokens, tens to hundreds of them.
   */
  readonly reuseOverContiguity: number
}

export class PrefixCacheConfig extends Context.Tag("weft/PrefixCacheConfig")<PrefixCacheConfig, PrefixCacheSettings>() {
  static readonly defaults: PrefixCacheSettings = { enabled: true, evictionThreshold: 0.8, reuseOverContiguity: 64 }
  static layer = (settings: Partial<PrefixCacheSettings> = {}): Layer.Layer<PrefixCacheConfig> =>
    Layer.succeed(PrefixCacheConfig, { ...PrefixCacheConfig.defaults, ...settings })
}

/** What a request's prompt is matched under: only entries with the same key (tenant, API key, cache salt) are reused. */
export interface SlotRequest {
  readonly prompt: ReadonlyArray<number>
  readonly cacheKey?: string | undefined
  /** A chat session's turn: its KV is restored from disk when the cache has less of it, and saved when it ends. */
  readonly sessionId?: string | undefined
}

/** A slot held by one running request; released (its KV kept as a prefix, or erased) when the holder's scope closes. */
export interface SlotLease {
  readonly slot: number
  readonly requestId: string
  /** Leading prompt tokens already in the slot's KV: only the rest needs evaluating. */
  readonly reusedTokens: number
  /** Records how many KV cells the holder's sequence occupies now (synchronous: the generation calls it every token). */
  readonly setCells: (cells: number) => void
}

export interface PrefixCacheStats {
  readonly lookups: number
  readonly hits: number
  readonly hitTokens: number
  readonly evictions: number
  readonly evictedTokens: number
}

/** A point-in-time view of the pool. */
export interface SeqPoolStats {
  readonly total: number
  readonly free: number
  /** Slots whose KV erase kept failing: taken out of service rather than handed out dirty. */
  readonly quarantined: ReadonlyArray<number>
  readonly holders: ReadonlyArray<{ readonly slot: number; readonly requestId: string; readonly cells: number }>
  /** Slots keeping a cached prefix between requests, with its length in tokens. */
  readonly cached: ReadonlyArray<{ readonly slot: number; readonly tokens: number }>
  /** Tokens in KV: running + cached. */
  readonly kvTokens: number
  readonly runningTokens: number
  readonly cachedTokens: number
  readonly kvBytes: number
  readonly cache: PrefixCacheStats
}

/** Every slot is in exactly one of these: its cells are running, cached, or erased — never lost track of. */
type SlotState =
  | { readonly _tag: "Empty" }
  | { readonly _tag: "Held"; readonly requestId: string; readonly cacheKey: string; cells: number }
  | {
    readonly _tag: "Cached"
    readonly tokens: ReadonlyArray<number>
    readonly cacheKey: string
    readonly lastUsed: number
  }
  | { readonly _tag: "Evicting" }
  | { readonly _tag: "Quarantined"; readonly cells: number }

const eraseRetries = Schedule.recurs(2)

/** Whether one slot's ranking key comes before another's, element by element. */
const ranksBefore = Order.lessThan(Order.array(Order.number))

const sharedPrefixLength = (a: ReadonlyArray<number>, b: ReadonlyArray<number>): number => {
  const limit = Math.min(a.length, b.length)
  let index = 0
  while (index < limit && a[index] === b[index]) index++
  return index
}

/** A failure that may have left the slot's cells half-written: those are erased, never cached. */
const leftCellsUnknown = (exit: Exit.Exit<unknown, unknown>): boolean =>
  Exit.isFailure(exit) &&
  (Cause.isDie(exit.cause) ||
    Cause.failures(exit.cause).pipe((failures) =>
      [...failures].some((error) => error instanceof DecodeFailed)
    ))

/**
 * The sequence slots of the one context. A Semaphore bounds how many are held; a lease's finalizer returns the slot
 * however its holder ended, keeping its cells as a cached prefix (evicted LRU-first under the limits) or erasing them.
 * A new request gets the free slot sharing the longest prefix with its prompt under the same cache key.
 */
export class SeqPool extends Effect.Service<SeqPool>()("weft/SeqPool", {
  effect: Effect.gen(function*() {
    const backend = yield* Backend
    const cacheSettings = Option.getOrElse(yield* Effect.serviceOption(PrefixCacheConfig), () => PrefixCacheConfig.defaults)
    const sessionKv = Option.getOrUndefined(yield* Effect.serviceOption(SessionKvConfig))
    const total = backend.info.parallel
    const permits = yield* Effect.makeSemaphore(total)
    const slots: Array<SlotState> = Array.from({ length: total }, () => ({ _tag: "Empty" }))
    const counters = { lookups: 0, hits: 0, hitTokens: 0, evictions: 0, evictedTokens: 0 }
    let useClock = 0

    const cachedTokens = () =>
      slots.reduce((sum, state) => sum + (state._tag === "Cached" ? state.tokens.length : 0), 0)

    /** Erases a slot with retries; a slot that still cannot be erased is quarantined and keeps its permit. */
    const eraseOrQuarantine = (slot: number) =>
      backend.erase(slot).pipe(
        Effect.retry(eraseRetries),
        Effect.as(true),
        Effect.catchAll((error) =>
          Effect.as(
            Effect.zipRight(
              Effect.sync(() => {
                slots[slot] = { _tag: "Quarantined", cells: backend.cells(slot) }
              }),
              Effect.logError("KV erase kept failing; slot taken out of service", error)
            ),
            false
          )
        )
      )

    const overLimit = () => {
      const cached = cachedTokens()
      const threshold = cacheSettings.evictionThreshold
      const tokenLimit = cacheSettings.maxCachedTokens
      const byteLimit = cacheSettings.maxCachedBytes
      return (tokenLimit !== undefined && cached > threshold * tokenLimit) ||
        (byteLimit !== undefined && cached * backend.info.kvBytesPerToken > threshold * byteLimit)
    }

    /**
     * Erases least-recently-used cached prefixes until the cache is back under its limits; never touches held slots.
     * Runs inside `release` while the releasing holder still has its permit, so each victim is reserved before its
     * (asynchronous) erase and free permits always equal choosable slots. A victim that cannot be erased is
     * quarantined and takes over that permit; returns whether the caller still has its permit to release.
     */
    const evictOverLimit = (hasPermit: boolean): Effect.Effect<boolean> =>
      Effect.suspend(() => {
        if (!hasPermit || !overLimit()) return Effect.succeed(hasPermit)
        let victim = -1
        let oldest = Infinity
        slots.forEach((state, slot) => {
          if (state._tag === "Cached" && state.lastUsed < oldest) {
            victim = slot
            oldest = state.lastUsed
          }
        })
        if (victim === -1) return Effect.succeed(hasPermit)
        const evicted = (slots[victim] as Extract<SlotState, { _tag: "Cached" }>).tokens.length
        slots[victim] = { _tag: "Evicting" }
        return Effect.flatMap(eraseOrQuarantine(victim), (erased) => {
          counters.evictions += 1
          counters.evictedTokens += evicted
          if (erased) slots[victim] = { _tag: "Empty" }
          return evictOverLimit(erased)
        })
      })

    const release = (slot: number, cacheKey: string, exit: Exit.Exit<unknown, unknown>, sessionId: string | undefined) =>
      Effect.gen(function*() {
        // A turn that ended normally leaves its session's whole conversation in the slot.
        if (sessionKv !== undefined && sessionId !== undefined && Exit.isSuccess(exit)) yield* saveSession(sessionKv, backend, slot, sessionId)
        let hasPermit: boolean
        if (cacheSettings.enabled && !leftCellsUnknown(exit)) {
          slots[slot] = { _tag: "Cached", tokens: backend.tokensOf(slot), cacheKey, lastUsed: useClock++ }
          hasPermit = yield* evictOverLimit(true)
        } else {
          hasPermit = yield* eraseOrQuarantine(slot)
          if (hasPermit) slots[slot] = { _tag: "Empty" }
        }
        if (hasPermit) yield* permits.release(1)
      }).pipe(Effect.withSpan("SeqPool.release", { attributes: { slot } }))

    const held = (slot: number) => slots[slot]?._tag === "Held"

    /**
     * The free slot to give `request`. A prefix of at least `reuseOverContiguity` tokens under its key decides first (the
     * longest); otherwise the slot that keeps the held slots' ids most contiguous, because llama.cpp decodes each run of
     * consecutive sequence ids as a micro-batch of its own (with one KV stream per sequence, as node-llama-cpp creates
     * them): on the 2-core bench machine, 15 running sequences took 30 ms per step as ids 0–14 and 39 ms with one id
     * missing in the middle, and 8 of them 20 ms as ids 0–7 against 63 ms as the odd ids. Then the longer shared
     * prefix, then the least recently used (empty first).
     */
    const chooseSlot = (request: SlotRequest, cacheKey: string) => {
      let best = -1
      let bestShared = 0
      let bestKey: ReadonlyArray<number> = []
      slots.forEach((state, slot) => {
        if (state._tag !== "Empty" && state._tag !== "Cached") return
        // At least one prompt token is always evaluated, for the first sampled token.
        const shared = state._tag === "Cached" && state.cacheKey === cacheKey
          ? Math.min(sharedPrefixLength(state.tokens, request.prompt), request.prompt.length - 1)
          : 0
        // How many more runs of consecutive held ids taking this slot makes: 1, 0 (extends one) or -1 (joins two).
        const newRuns = 1 - Number(held(slot - 1)) - Number(held(slot + 1))
        const lastUsed = state._tag === "Cached" ? state.lastUsed : -1
        const key = [shared >= cacheSettings.reuseOverContiguity ? -shared : 0, newRuns, -shared, lastUsed]
        if (best === -1 || ranksBefore(key, bestKey)) {
          best = slot
          bestShared = shared
          bestKey = key
        }
      })
      return { slot: best, reused: bestShared }
    }

    type HeldState = Extract<SlotState, { _tag: "Held" }>

    /**
     * Reserves the chosen slot at once (so no other acquirer can pick it while its trim runs), then trims it to the part
     * of its cached prefix the prompt reuses; at least one prompt token is always left to evaluate.
     */
    const takeSlot = (
      requestId: string,
      request: SlotRequest,
      cacheKey: string
    ): Effect.Effect<{ readonly slot: number; readonly held: HeldState } | undefined> =>
      Effect.suspend(() => {
        const { reused, slot } = chooseSlot(request, cacheKey)
        if (slot === -1) return Effect.dieMessage("SeqPool: a permit was granted with no free slot")
        const previous = slots[slot]!
        const cachedLength = previous._tag === "Cached" ? previous.tokens.length : 0
        const held: HeldState = { _tag: "Held", requestId, cacheKey, cells: cachedLength }
        slots[slot] = held
        counters.lookups += 1
        if (reused > 0) {
          counters.hits += 1
          counters.hitTokens += reused
        }
        const restored = restoreFromDisk(slot, held, request, reused)
        if (restored !== undefined) return restored
        if (cachedLength === reused) return Effect.succeed({ slot, held })
        // Taking a cached slot it shares nothing with evicts that prefix to make room.
        if (reused === 0) counters.evictions += 1
        counters.evictedTokens += cachedLength - reused
        return trimOrErase(slot, held, reused)
      })

    /**
     * When the session's file on disk shares more of the prompt than the slot's cache does, loads it into the slot
     * instead and keeps what the prompt reuses; a file that cannot be loaded leaves the slot erased (evaluated again).
     * Undefined when there is nothing on disk to restore.
     */
    const restoreFromDisk = (
      slot: number,
      held: HeldState,
      request: SlotRequest,
      cachedReuse: number
    ): Effect.Effect<{ readonly slot: number; readonly held: HeldState } | undefined> | undefined => {
      const sessionId = request.sessionId
      if (sessionKv === undefined || sessionId === undefined || backend.loadSlot === undefined) return undefined
      return Effect.gen(function*() {
        const saved = yield* savedTokens(sessionKv, backend, sessionId)
        const onDisk = Option.match(saved, { onNone: () => 0, onSome: (tokens) => Math.min(sharedPrefixLength(tokens, request.prompt), request.prompt.length - 1) })
        if (onDisk <= cachedReuse) {
          if (held.cells === cachedReuse) return { slot, held }
          return yield* trimOrErase(slot, held, cachedReuse)
        }
        const loaded = yield* restoreSession(sessionKv, backend, slot, sessionId)
        if (Option.isNone(loaded)) {
          // A failed load may have written some cells: erase them all.
          const erased = yield* eraseOrQuarantine(slot)
          if (!erased) return undefined
          held.cells = 0
          return { slot, held }
        }
        const reused = Math.min(sharedPrefixLength(loaded.value, request.prompt), request.prompt.length - 1)
        counters.hits += cachedReuse > 0 ? 0 : 1
        counters.hitTokens += reused - cachedReuse
        held.cells = loaded.value.length
        return yield* trimOrErase(slot, held, reused)
      })
    }

    /** Trims the slot to `keep` cells, or erases it (quarantining it when that fails too); undefined when quarantined. */
    const trimOrErase = (slot: number, held: HeldState, keep: number) =>
      backend.trim(slot, keep).pipe(
        Effect.retry(eraseRetries),
        Effect.map(() => {
          held.cells = keep
          return { slot, held }
        }),
        Effect.catchAll(() =>
          Effect.map(eraseOrQuarantine(slot), (erased) => {
            if (!erased) return undefined
            held.cells = 0
            return { slot, held }
          })
        )
      )

    /** Waits for a free slot (interruptibly) and holds it until the caller's scope closes. */
    const acquire = Effect.fn("SeqPool.acquire")(function*(requestId: string, request: SlotRequest) {
      const cacheKey = request.cacheKey ?? ""
      return yield* Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          let taken: { readonly slot: number; readonly held: HeldState } | undefined
          while (taken === undefined) {
            yield* restore(permits.take(1))
            // A slot quarantined while being trimmed keeps that permit; take another.
            taken = yield* takeSlot(requestId, request, cacheKey)
          }
          const { held, slot } = taken
          yield* Effect.addFinalizer((exit) => release(slot, cacheKey, exit, request.sessionId))
          const lease: SlotLease = {
            slot,
            requestId,
            reusedTokens: held.cells,
            setCells: (cells) => {
              held.cells = cells
            }
          }
          return lease
        })
      )
    })

    /**
     * Erases every cached prefix (memory pressure). Each victim is reserved with a permit before its erase, as in
     * `evictOverLimit`, so no acquirer picks it meanwhile; held slots are never touched.
     */
    const evictCached: Effect.Effect<void> = Effect.uninterruptible(
      Effect.gen(function*() {
        while (slots.some((state) => state._tag === "Cached")) {
          yield* permits.take(1)
          const victim = slots.findIndex((state) => state._tag === "Cached")
          if (victim === -1) {
            yield* permits.release(1)
            return
          }
          counters.evictions += 1
          counters.evictedTokens += (slots[victim] as Extract<SlotState, { _tag: "Cached" }>).tokens.length
          slots[victim] = { _tag: "Evicting" }
          if (yield* eraseOrQuarantine(victim)) {
            slots[victim] = { _tag: "Empty" }
            yield* permits.release(1)
          }
        }
      })
    ).pipe(Effect.withSpan("SeqPool.evictCached"))

    const stats = Effect.sync((): SeqPoolStats => {
      const holders = slots.flatMap((state, slot) =>
        state._tag === "Held" ? [{ slot, requestId: state.requestId, cells: state.cells }] : []
      )
      const runningTokens = holders.reduce((sum, holder) => sum + holder.cells, 0)
      const cached = cachedTokens()
      return {
        total,
        free: slots.filter((state) => state._tag === "Empty" || state._tag === "Cached").length,
        quarantined: slots.flatMap((state, slot) => (state._tag === "Quarantined" ? [slot] : [])),
        holders,
        cached: slots.flatMap((state, slot) => (state._tag === "Cached" ? [{ slot, tokens: state.tokens.length }] : [])),
        kvTokens: runningTokens + cached,
        runningTokens,
        cachedTokens: cached,
        kvBytes: (runningTokens + cached) * backend.info.kvBytesPerToken,
        cache: { ...counters }
      }
    })

    return {
      acquire,
      stats,
      evictCached,
      /** Free slots right now, read synchronously so admission can check and enqueue in one step. */
      freeNow: () => slots.filter((state) => state._tag === "Empty" || state._tag === "Cached").length,
      info: backend.info
    } as const
  })
}) {}
