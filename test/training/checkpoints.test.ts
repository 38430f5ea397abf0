import { Effect, FastCheck as fc } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import {
  CheckpointCorrupt,
  type CheckpointInfo,
  checkpointsToKeep,
  listCheckpoints,
  recordCheckpoint,
  sha256File,
  sidecarPath,
  verifyCheckpoint
} from "../../src/training/Checkpoints.js"
import type { TrainingExample } from "../../src/training/datasets/DatasetRecord.js"
import { train, type TrainingProgress } from "../../src/training/Trainer.js"
import { tinyF32ModelPath } from "../support/tinyModel.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-checkpoints-"))

const examples = (count: number, offset = 0): Array<TrainingExample> =>
  Array.from({ length: count }, (_, at) => ({ _tag: "Completion", prompt: `Q: where is the thing ${at + offset}?\nA:`, completion: " in the garden\n" }))

const info = (step: number, validationLoss?: number): CheckpointInfo => ({
  path: `step-${step}.gguf`,
  step,
  epoch: 1,
  sha256: "",
  bytes: 0,
  trainLoss: 1,
  ...(validationLoss === undefined ? {} : { validationLoss })
})

describe("checkpointsToKeep", () => {
  it("keeps the latest and the best K by validation loss, and drops only ones no better than every kept one", () => {
    fc.assert(fc.property(
      fc.uniqueArray(fc.integer({ min: 1, max: 1000 }), { minLength: 1, maxLength: 20 }),
      fc.array(fc.float({ min: 0, max: 10, noNaN: true }), { minLength: 20, maxLength: 20 }),
      fc.integer({ min: 0, max: 5 }),
      (steps, losses, keep) => {
        const all = steps.map((step, at) => info(step, losses[at]))
        const kept = checkpointsToKeep(all, keep)
        const latest = all.reduce((last, candidate) => candidate.step > last.step ? candidate : last)
        expect(kept).toContain(latest)
        expect(kept.length).toBe(Math.min(all.length, keep + (kept.length > keep ? 1 : 0)))
        const ranked = kept.filter((candidate) => candidate !== latest || kept.length <= keep)
        for (const dropped of all.filter((candidate) => !kept.includes(candidate))) {
          for (const candidate of ranked) expect(dropped.validationLoss!).toBeGreaterThanOrEqual(candidate.validationLoss!)
        }
      }
    ))
  })

  it("without validation losses keeps the latest K", () => {
    expect(checkpointsToKeep([info(1), info(2), info(3), info(4)], 2).map((kept) => kept.step)).toEqual([3, 4])
  })
})

describe("checkpoints of a run", () => {
  it("are verified, carry their checksum, epoch and losses in a sidecar and in the event, and only the best K and the latest stay", async () => {
    const checkpointDir = path.join(dir, "run")
    const progress: Array<TrainingProgress> = []
    const result = await Effect.runPromise(train({
      modelPath: await tinyF32ModelPath(),
      examples: examples(40),
      validation: examples(12, 500),
      epochs: 2,
      batchSize: 1,
      learningRate: 1e-2,
      schedule: "constant",
      weightDecay: 0,
      threads: 1,
      out: path.join(dir, "run.gguf"),
      checkpointDir,
      checkpointEvery: 1,
      keepCheckpoints: 2,
      minDelta: 0,
      onProgress: (event) => Effect.sync(() => progress.push(event))
    }))
    const events = progress.flatMap((event) => event._tag === "Checkpoint" ? [event] : [])
    // One per step (every step, epoch ends included), each with the epoch it was in and its validation loss.
    expect(events.map((event) => event.step)).toEqual(Array.from({ length: result.steps }, (_, at) => at + 1))
    expect(events.every((event) => event.validationLoss !== undefined && event.sha256.length === 64 && event.trainLoss > 0)).toBe(true)
    expect(events.at(-1)!.epoch).toBe(2)
    expect(events[0]!.epoch).toBe(1)

    // Kept: the latest and the 2 best by validation loss; every other file is gone.
    const latest = events.at(-1)!
    const best = [...events].sort((a, b) => a.validationLoss! - b.validationLoss! || b.step - a.step).slice(0, 2)
    const expected = [...new Set([...best, latest])].map((event) => event.path).sort()
    expect([...result.checkpoints].sort()).toEqual(expected)
    expect(result.keptCheckpoints.map((kept) => kept.path).sort()).toEqual(expected)
    const onDisk = fs.readdirSync(checkpointDir).filter((file) => file.startsWith("step-") && file.endsWith(".gguf"))
    expect(onDisk.map((file) => path.join(checkpointDir, file)).sort()).toEqual(expected)
    expect(fs.readdirSync(checkpointDir).filter((file) => file.endsWith(".partial"))).toEqual([])

    // Each sidecar records what the event said, and the checksum is the file's.
    for (const kept of result.keptCheckpoints) {
      const event = events.find((candidate) => candidate.path === kept.path)!
      const sidecar = JSON.parse(fs.readFileSync(sidecarPath(kept.path), "utf8")) as CheckpointInfo
      expect(sidecar).toMatchObject({ step: event.step, epoch: event.epoch, sha256: event.sha256, trainLoss: event.trainLoss, validationLoss: event.validationLoss })
      expect(await sha256File(kept.path)).toBe(event.sha256)
      expect(await Effect.runPromise(verifyCheckpoint(kept.path))).toMatchObject({ step: event.step, sha256: event.sha256 })
    }
    expect((await Effect.runPromise(listCheckpoints(checkpointDir))).map((listed) => listed.path)).toEqual(
      [...result.keptCheckpoints].sort((a, b) => a.step - b.step).map((kept) => kept.path)
    )

    // A flipped byte, a missing sidecar and a file cut short are each caught.
    const flipped = path.join(dir, "flipped.gguf")
    fs.copyFileSync(latest.path, flipped)
    fs.copyFileSync(sidecarPath(latest.path), sidecarPath(flipped))
    const bytes = fs.readFileSync(flipped)
    bytes[bytes.length - 10] = bytes[bytes.length - 10]! ^ 0xff
    fs.writeFileSync(flipped, bytes)
    const mismatch = await Effect.runPromise(Effect.flip(verifyCheckpoint(flipped)))
    expect(mismatch).toBeInstanceOf(CheckpointCorrupt)
    expect(mismatch.message).toContain("does not match")
    fs.rmSync(sidecarPath(flipped))
    expect((await Effect.runPromise(Effect.flip(verifyCheckpoint(flipped)))).message).toContain("sidecar")
    const cut = path.join(dir, "cut.gguf")
    fs.writeFileSync(cut, fs.readFileSync(latest.path).subarray(0, 200_000))
    const short = await Effect.runPromise(Effect.flip(recordCheckpoint(cut, { step: 1, epoch: 1, trainLoss: 1 })))
    expect(short).toBeInstanceOf(CheckpointCorrupt)
    expect(fs.existsSync(sidecarPath(cut))).toBe(false)
  }, 300_000)
})
