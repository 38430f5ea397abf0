import { createHash } from "node:crypto"
import { createReadStream } from "node:fs"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { Effect, Schema } from "effect"

/** A checkpoint as its sidecar (`<checkpoint>.json`) records it. */
export const CheckpointInfo = Schema.Struct({
  path: Schema.String,
  step: Schema.Number,
  epoch: Schema.Number,
  /** SHA-256 of the GGUF file, hex. */
  sha256: Schema.String,
  bytes: Schema.Number,
  /** Mean training loss of the epoch's steps up to this checkpoint. */
  trainLoss: Schema.Number,
  /** Loss on the validation set at this checkpoint, when the run has one. */
  validationLoss: Schema.optional(Schema.Number)
})
export type CheckpointInfo = typeof CheckpointInfo.Type

/** A checkpoint failed its check: unreadable, cut short, without its sidecar, or its checksum does not match. */
export class CheckpointCorrupt extends Schema.TaggedError<CheckpointCorrupt>()("CheckpointCorrupt", {
  path: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `checkpoint ${this.path} is corrupt: ${this.reason}`
  }
}

/** Where a checkpoint's sidecar lives. */
export const sidecarPath = (checkpoint: string): string => `${checkpoint}.json`

/** SHA-256 of a file, hex, read as a stream. */
export const sha256File = (file: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const hash = createHash("sha256")
    createReadStream(file).on("error", reject).on("data", (chunk) => hash.update(chunk)).on("end", () => resolve(hash.digest("hex")))
  })

const bytesPerElement: Partial<Record<number, number>> = { 0: 4, 1: 2 }

/**
 * Fails unless `file` parses as GGUF and every F32/F16 tensor's data lies inside it (a checkpoint cut short fails).
 */
export const checkGguf = Effect.fn("Checkpoints.checkGguf")(function*(file: string) {
  const corrupt = (reason: string) => new CheckpointCorrupt({ path: file, reason })
  const { readGgufFileInfo } = yield* Effect.promise(() => import("node-llama-cpp"))
  const info = yield* Effect.tryPromise({
    try: () => readGgufFileInfo(file, { logWarnings: false }),
    catch: (cause) => corrupt(`not a readable GGUF (${cause instanceof Error ? cause.message : String(cause)})`)
  })
  const size = (yield* Effect.promise(() => fs.stat(file))).size
  for (const tensor of info.fullTensorInfo ?? []) {
    const width = bytesPerElement[tensor.ggmlType]
    if (width === undefined) continue
    const end = Number(tensor.fileOffset) + width * tensor.dimensions.reduce<number>((total, dimension) => total * Number(dimension), 1)
    if (end > size) return yield* corrupt(`tensor ${tensor.name} ends at byte ${end} of a ${size}-byte file`)
  }
})

const decodeInfo = Schema.decodeUnknown(Schema.parseJson(CheckpointInfo))

/**
 * Checks a checkpoint before it is trusted (on resume): its sidecar is there and the file's SHA-256 matches the one
 * recorded when it was written. Succeeds with what the sidecar records.
 */
export const verifyCheckpoint = Effect.fn("verifyCheckpoint")(function*(checkpoint: string) {
  const corrupt = (reason: string) => new CheckpointCorrupt({ path: checkpoint, reason })
  const text = yield* Effect.tryPromise({
    try: () => fs.readFile(sidecarPath(checkpoint), "utf8"),
    catch: () => corrupt(`its sidecar ${sidecarPath(checkpoint)} is missing`)
  })
  const info = yield* decodeInfo(text).pipe(Effect.mapError(() => corrupt(`its sidecar ${sidecarPath(checkpoint)} is unreadable`)))
  const actual = yield* Effect.tryPromise({ try: () => sha256File(checkpoint), catch: () => corrupt("the file cannot be read") })
  if (actual !== info.sha256) return yield* corrupt(`SHA-256 ${actual} does not match the recorded ${info.sha256}`)
  return { ...info, path: checkpoint } satisfies CheckpointInfo
})

/** Writes `text` to `target` atomically: beside it, then renamed over it. */
const writeAtomically = (target: string, text: string) =>
  Effect.promise(async () => {
    const partial = `${target}.${process.pid}.partial`
    await fs.writeFile(partial, text)
    await fs.rename(partial, target)
  })

/**
 * Records a checkpoint just written at `checkpoint`: checks that it reads back as a complete GGUF, then writes its
 * sidecar with its SHA-256 (a checkpoint without a sidecar is never trusted).
 */
export const recordCheckpoint = Effect.fn("Checkpoints.record")(function*(
  checkpoint: string,
  facts: Omit<CheckpointInfo, "path" | "sha256" | "bytes">
) {
  yield* checkGguf(checkpoint)
  const [sha256, stat] = yield* Effect.tryPromise({
    try: () => Promise.all([sha256File(checkpoint), fs.stat(checkpoint)]),
    catch: () => new CheckpointCorrupt({ path: checkpoint, reason: "the file cannot be read back" })
  })
  const info: CheckpointInfo = { path: checkpoint, sha256, bytes: stat.size, ...facts }
  yield* writeAtomically(sidecarPath(checkpoint), JSON.stringify(info, null, 2))
  return info
})

/**
 * Which checkpoints to keep: the latest (to resume from) and the best `keep` by validation loss, or the latest `keep`
 * when they have none. Later wins a tie.
 */
export const checkpointsToKeep = (checkpoints: ReadonlyArray<CheckpointInfo>, keep: number): Array<CheckpointInfo> => {
  const latest = checkpoints.reduce<CheckpointInfo | undefined>((last, info) => last === undefined || info.step >= last.step ? info : last, undefined)
  const ranked = [...checkpoints].sort((a, b) =>
    (a.validationLoss ?? Number.POSITIVE_INFINITY) - (b.validationLoss ?? Number.POSITIVE_INFINITY) || b.step - a.step
  )
  const kept = new Set(ranked.slice(0, Math.max(keep, 0)))
  if (latest !== undefined) kept.add(latest)
  return checkpoints.filter((info) => kept.has(info))
}

/** Deletes a checkpoint and its sidecar. */
export const removeCheckpoint = (checkpoint: string) =>
  Effect.promise(() => Promise.all([fs.rm(checkpoint, { force: true }), fs.rm(sidecarPath(checkpoint), { force: true })])).pipe(Effect.asVoid)

/** The checkpoints a run left in `directory` (those with a sidecar), by step. */
export const listCheckpoints = Effect.fn("listCheckpoints")(function*(directory: string) {
  const names = yield* Effect.promise(() => fs.readdir(directory).catch(() => [] as Array<string>))
  const infos: Array<CheckpointInfo> = []
  for (const name of names.filter((file) => file.endsWith(".gguf.json"))) {
    const text = yield* Effect.promise(() => fs.readFile(path.join(directory, name), "utf8").catch(() => ""))
    const info = yield* decodeInfo(text).pipe(Effect.option)
    if (info._tag === "Some") infos.push({ ...info.value, path: path.join(directory, name.slice(0, -".json".length)) })
  }
  return infos.sort((a, b) => a.step - b.step)
})
