import { Context, Effect, Layer, Option } from "effect"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import type { BackendShape } from "../engine/Backend.js"

/** Where sessions' KV states are kept between turns and restarts, and how many bytes of them at most. */
export interface SessionKvSettings {
  readonly dir: string
  readonly maxBytes: number
}

/** Session KV on disk; absent (or no service) keeps sessions' KV in memory only. */
export class SessionKvConfig extends Context.Tag("weft/SessionKvConfig")<SessionKvConfig, SessionKvSettings | undefined>() {
  static layer = (settings: SessionKvSettings | undefined): Layer.Layer<SessionKvConfig> => Layer.succeed(SessionKvConfig, settings)
}

/**
 * What a state file was written from, kept beside it: llama.cpp may crash on a state from another model, so a file
 * whose stamp does not match the engine is never handed to it. `tokens` lets a restore be chosen before loading.
 */
interface Stamp {
  readonly model: string
  readonly vocabSize: number
  readonly kvBytesPerToken: number
  readonly contextSize: number
  readonly tokens: ReadonlyArray<number>
}

const stateFile = (settings: SessionKvSettings, sessionId: string) => path.join(settings.dir, `${sessionId}.kv`)
const stampFile = (settings: SessionKvSettings, sessionId: string) => path.join(settings.dir, `${sessionId}.kv.json`)

const stampOf = (backend: BackendShape, tokens: ReadonlyArray<number>): Stamp => ({
  model: backend.info.id,
  vocabSize: backend.info.vocabSize,
  kvBytesPerToken: backend.info.kvBytesPerToken,
  contextSize: backend.info.contextSize,
  tokens
})

const matches = (stamp: Stamp, backend: BackendShape): boolean => {
  const expected = stampOf(backend, [])
  return stamp.model === expected.model && stamp.vocabSize === expected.vocabSize &&
    stamp.kvBytesPerToken === expected.kvBytesPerToken && stamp.tokens.length <= expected.contextSize &&
    Array.isArray(stamp.tokens)
}

/** Deletes the least recently written state files until the folder's total is within `maxBytes`. */
const enforceLimit = (settings: SessionKvSettings) =>
  Effect.promise(async () => {
    const names = (await fs.readdir(settings.dir).catch(() => [])).filter((name) => name.endsWith(".kv"))
    const files = await Promise.all(names.map(async (name) => {
      const file = path.join(settings.dir, name)
      const info = await fs.stat(file).catch(() => undefined)
      return { file, bytes: info?.size ?? 0, writtenAt: info?.mtimeMs ?? 0 }
    }))
    let total = files.reduce((sum, file) => sum + file.bytes, 0)
    for (const file of files.sort((a, b) => a.writtenAt - b.writtenAt)) {
      if (total <= settings.maxBytes) break
      await Promise.all([fs.rm(file.file, { force: true }), fs.rm(`${file.file}.json`, { force: true })])
      total -= file.bytes
    }
  })

/** The session's saved tokens, when its files exist and were written by this model; a mismatch is logged. */
export const savedTokens = (settings: SessionKvSettings, backend: BackendShape, sessionId: string) =>
  Effect.gen(function*() {
    const text = yield* Effect.promise(() => fs.readFile(stampFile(settings, sessionId), "utf8").catch(() => undefined))
    if (text === undefined) return Option.none<ReadonlyArray<number>>()
    const stamp = yield* Effect.try(() => JSON.parse(text) as Stamp).pipe(Effect.option)
    if (Option.isNone(stamp) || !matches(stamp.value, backend)) {
      yield* Effect.logWarning("session KV file does not match this model; the history is evaluated again").pipe(
        Effect.annotateLogs({ session: sessionId, model: backend.info.id })
      )
      return Option.none<ReadonlyArray<number>>()
    }
    return Option.some(stamp.value.tokens)
  })

/** Loads the session's state into `slot`; its tokens, or none (logged) when the file cannot be loaded. */
export const restoreSession = (settings: SessionKvSettings, backend: BackendShape, slot: number, sessionId: string) =>
  Effect.gen(function*() {
    if (backend.loadSlot === undefined) return Option.none<ReadonlyArray<number>>()
    return yield* backend.loadSlot(slot, stateFile(settings, sessionId)).pipe(
      Effect.map(Option.some),
      Effect.catchAll((error) =>
        Effect.as(
          Effect.logWarning("session KV file could not be restored; the history is evaluated again", error).pipe(
            Effect.annotateLogs({ session: sessionId })
          ),
          Option.none<ReadonlyArray<number>>()
        )
      )
    )
  })

/** Writes `slot`'s state as the session's (atomically, stamp last), then keeps the folder within its limit. */
export const saveSession = (settings: SessionKvSettings, backend: BackendShape, slot: number, sessionId: string) =>
  Effect.gen(function*() {
    if (backend.saveSlot === undefined) return
    const target = stateFile(settings, sessionId)
    const partial = `${target}.${process.pid}.partial`
    yield* Effect.promise(() => fs.mkdir(settings.dir, { recursive: true }))
    // The old stamp goes first and the new one last, so a stamp never describes another state than its file holds.
    yield* Effect.promise(() => fs.rm(stampFile(settings, sessionId), { force: true }))
    yield* backend.saveSlot(slot, partial)
    yield* Effect.promise(async () => {
      await fs.rename(partial, target)
      await fs.writeFile(stampFile(settings, sessionId), JSON.stringify(stampOf(backend, backend.tokensOf(slot))))
    })
    yield* enforceLimit(settings)
  }).pipe(
    Effect.catchAll((error) => Effect.logWarning("session KV could not be saved", error).pipe(Effect.annotateLogs({ session: sessionId })))
  )

/** Deletes the session's files. */
export const removeSession = (settings: SessionKvSettings, sessionId: string) =>
  Effect.promise(() => Promise.all([fs.rm(stateFile(settings, sessionId), { force: true }), fs.rm(stampFile(settings, sessionId), { force: true })]))
