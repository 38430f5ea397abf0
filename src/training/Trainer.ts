import * as fs from "node:fs/promises"
import * as path from "node:path"
import { Effect, Schema } from "effect"
import type { GgufTensorInfo } from "node-llama-cpp"
import type { TrainingExample } from "./datasets/DatasetRecord.js"
import { type CheckpointInfo, checkpointsToKeep, recordCheckpoint, removeCheckpoint } from "./Checkpoints.js"
import { type EncodedExample, loadExampleTokenizer } from "./ExampleTokenizer.js"
import { loadTrainerAddon, type TrainerAddon, type TrainerHandle, TrainerUnavailable } from "./TrainerAddon.js"

/** The model's weights are not F32: at this llama.cpp version only F32 tensors are trainable. */
export class ModelNotTrainable extends Schema.TaggedError<ModelNotTrainable>()("ModelNotTrainable", {
  modelPath: Schema.String,
  tensorTypes: Schema.Array(Schema.String)
}) {
  override get message(): string {
    return `${this.modelPath} has ${this.tensorTypes.join(", ")} weights, and llama.cpp trains only F32 tensors: ` +
      "use an F32 GGUF (convert_hf_to_gguf.py --outtype f32, llama-quantize --allow-requantize IN OUT F32, " +
      "or `weft model generate --weights f32` for a synthetic one)"
  }
}

/** A training step or save failed inside llama.cpp, or a file could not be written. */
export class TrainingFailed extends Schema.TaggedError<TrainingFailed>()("TrainingFailed", {
  reason: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {
  override get message(): string {
    return `training failed: ${this.reason}`
  }
}

/** The dataset gives nothing to train on: no tokens, or none to learn (a chat without an assistant turn). */
export class DatasetTooSmall extends Schema.TaggedError<DatasetTooSmall>()("DatasetTooSmall", {
  tokens: Schema.Number,
  contextLength: Schema.Number
}) {
  override get message(): string {
    return this.tokens < 2
      ? `the dataset has ${this.tokens} tokens; training needs at least two`
      : `the dataset has ${this.tokens} tokens and none to learn: a chat example needs an assistant turn`
  }
}

/** The run stopped at a step boundary because `stopRequested` asked it to; `checkpoint` holds its weights there. */
export class TrainingStopped extends Schema.TaggedError<TrainingStopped>()("TrainingStopped", {
  step: Schema.Number,
  checkpoint: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return `training stopped at step ${this.step}`
  }
}

/** How the learning rate moves over the run. */
export type LearningRateSchedule = "constant" | "linear" | "cosine"

/** What to train, how, and where the results go. */
export interface TrainOptions {
  readonly modelPath: string
  readonly examples: ReadonlyArray<TrainingExample>
  readonly validation?: ReadonlyArray<TrainingExample> | undefined
  /** Without `validation`: this fraction of `examples` (0 to 0.5), spread evenly, is held out as the validation set. */
  readonly validationSplit?: number | undefined
  readonly epochs: number
  /** Windows of the model's context per step. */
  readonly batchSize: number
  readonly learningRate: number
  readonly schedule: LearningRateSchedule
  readonly weightDecay: number
  readonly threads: number
  readonly out: string
  /** Where checkpoints go (`step-N.gguf`); none when absent. */
  readonly checkpointDir?: string | undefined
  /** Checkpoint every this many steps (and at every epoch end) when `checkpointDir` is set; 0 only at epoch ends. */
  readonly checkpointEvery: number
  /**
   * How many checkpoints to keep besides the latest (always kept, to resume from): the best by validation loss, or
   * the latest when the run has no validation data. 3 when absent.
   */
  readonly keepCheckpoints?: number | undefined
  /** Stop after this many epochs without a validation improvement of at least `minDelta`; needs validation data. */
  readonly patience?: number | undefined
  readonly minDelta: number
  /**
   * Continue a run from a checkpoint it wrote: training starts from that checkpoint's weights and skips the first
   * `step` steps of the same (deterministic) order, so the first step run is `step + 1`. The optimizer's moments and
   * the early-stopping state start afresh.
   */
  readonly resumeFrom?: { readonly checkpoint: string; readonly step: number } | undefined
  /** Asked after every step: when it answers true the run checkpoints (if `checkpointDir` is set) and fails with `TrainingStopped`. */
  readonly stopRequested?: Effect.Effect<boolean> | undefined
  readonly onProgress: (progress: TrainingProgress) => Effect.Effect<void>
}

/** One event of a run: a step, an epoch's end, or a checkpoint. */
export type TrainingProgress =
  | {
    readonly _tag: "Step"
    readonly epoch: number
    readonly step: number
    readonly totalSteps: number
    readonly loss: number
    readonly accuracy: number
    readonly learningRate: number
    readonly tokensPerSecond: number
    readonly etaSeconds: number
  }
  | {
    readonly _tag: "Epoch"
    readonly epoch: number
    readonly trainLoss: number
    readonly validationLoss: number | undefined
    readonly validationAccuracy: number | undefined
  }
  | {
    readonly _tag: "Checkpoint"
    readonly step: number
    readonly path: string
    readonly epoch: number
    /** SHA-256 of the file, also in its sidecar (`<path>.json`); `verifyCheckpoint` checks it. */
    readonly sha256: string
    readonly trainLoss: number
    readonly validationLoss: number | undefined
  }

/** How a run ended. */
export interface TrainingResult {
  readonly out: string
  readonly steps: number
  readonly epochs: number
  readonly stoppedBecause: "completed" | "early-stopping"
  /** Mean training loss of each epoch. */
  readonly epochLosses: ReadonlyArray<number>
  readonly validationLosses: ReadonlyArray<number>
  readonly bestValidationLoss: number | undefined
  /** The epoch whose weights are the result when there is validation data (the best by validation loss). */
  readonly bestEpoch: number | undefined
  /** Why the run ended, in words: the epochs done, or the patience run out and the best epoch kept. */
  readonly stopReason: string
  /** The checkpoints kept (the latest and the best `keepCheckpoints`), by step. */
  readonly checkpoints: ReadonlyArray<string>
  /** The same, as their sidecars record them. */
  readonly keptCheckpoints: ReadonlyArray<CheckpointInfo>
}

const GGML_TYPE_F32 = 0

/** Fails with `ModelNotTrainable` unless every weight matrix of the model is F32. */
export const requireF32 = Effect.fn("requireF32")(function*(modelPath: string) {
  const { readGgufFileInfo, GgmlType } = yield* Effect.promise(() => import("node-llama-cpp"))
  const info = yield* Effect.tryPromise({
    try: () => readGgufFileInfo(modelPath, { logWarnings: false }),
    catch: (cause) => new TrainingFailed({ reason: `cannot read ${modelPath}`, cause })
  })
  const matrices = (info.fullTensorInfo ?? []).filter((tensor: GgufTensorInfo) => tensor.dimensions.length >= 2)
  const types = [...new Set(matrices.filter((tensor) => tensor.ggmlType !== GGML_TYPE_F32).map((tensor) => GgmlType[tensor.ggmlType] ?? String(tensor.ggmlType)))]
  if (types.length > 0) return yield* new ModelNotTrainable({ modelPath, tensorTypes: types })
})

/** Windows of `contextLength + 1` tokens, joined, with `contextLength` flags per window: which labels count. */
export interface PackedWindows {
  readonly tokens: Int32Array
  readonly targets: Uint8Array
}

/**
 * The examples' tokens as one stream cut into windows of `contextLength + 1` tokens (inputs and, shifted by one, the
 * labels), advancing `contextLength` at a time; the last window wraps to the start of the stream (a stream shorter
 * than a window fills one window, repeating). A label counts when its token is one of its example's targets; a window
 * with none that counts is left out (it would teach nothing).
 */
export const packWindows = (examples: ReadonlyArray<EncodedExample>, contextLength: number): Array<PackedWindows> => {
  const stream = examples.flatMap((example) => example.tokens)
  const targets = examples.flatMap((example) => example.targets)
  const windows: Array<PackedWindows> = []
  for (let start = 0; start + 1 < stream.length; start += contextLength) {
    const window = new Int32Array(contextLength + 1)
    const counts = new Uint8Array(contextLength)
    for (let i = 0; i <= contextLength; i++) window[i] = stream[(start + i) % stream.length]!
    for (let i = 0; i < contextLength; i++) counts[i] = targets[(start + i + 1) % stream.length]! ? 1 : 0
    if (counts.includes(1)) windows.push({ tokens: window, targets: counts })
  }
  return windows
}

/**
 * `examples` split into training and validation sets: `fraction` of them (at least one when above 0, never all),
 * spread evenly over the list so that the validation set sees every part of it.
 */
export const splitValidation = <A>(examples: ReadonlyArray<A>, fraction: number): { readonly train: Array<A>; readonly validation: Array<A> } => {
  const held = fraction <= 0 || examples.length < 2 ? 0 : Math.min(examples.length - 1, Math.max(1, Math.round(examples.length * fraction)))
  const isHeld = (at: number) => Math.floor(((at + 1) * held) / examples.length) > Math.floor((at * held) / examples.length)
  return { train: examples.filter((_, at) => !isHeld(at)), validation: examples.filter((_, at) => isHeld(at)) }
}

/** The learning rate at `step` of `totalSteps`. */
export const learningRateAt = (schedule: LearningRateSchedule, base: number, step: number, totalSteps: number): number => {
  const progress = totalSteps <= 1 ? 0 : step / (totalSteps - 1)
  switch (schedule) {
    case "constant":
      return base
    case "linear":
      return base * (1 - 0.9 * progress)
    case "cosine":
      return base * (0.1 + 0.45 * (1 + Math.cos(Math.PI * progress)))
  }
}

const concat = (windows: ReadonlyArray<PackedWindows>): PackedWindows => {
  const tokens = new Int32Array(windows.reduce((total, window) => total + window.tokens.length, 0))
  const targets = new Uint8Array(windows.reduce((total, window) => total + window.targets.length, 0))
  let at = 0
  let flag = 0
  for (const window of windows) {
    tokens.set(window.tokens, at)
    targets.set(window.targets, flag)
    at += window.tokens.length
    flag += window.targets.length
  }
  return { tokens, targets }
}

const batches = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> =>
  Array.from({ length: Math.ceil(items.length / size) }, (_, at) => items.slice(at * size, (at + 1) * size))

/** Saves the trainer's model to `target` atomically: written beside it, then renamed over it. */
const saveAtomically = (addon: TrainerAddon, handle: TrainerHandle, target: string) =>
  Effect.gen(function*() {
    const partial = `${target}.${process.pid}.partial`
    yield* Effect.tryPromise({
      try: async () => {
        await fs.mkdir(path.dirname(target), { recursive: true })
        await addon.save(handle, partial)
        await fs.rename(partial, target)
      },
      catch: (cause) => new TrainingFailed({ reason: `cannot save ${target}`, cause })
    }).pipe(Effect.tapError(() => Effect.promise(() => fs.rm(partial, { force: true }))), Effect.uninterruptible)
    return target
  })

const runStep = (addon: TrainerAddon, handle: TrainerHandle, windows: PackedWindows, train: boolean) =>
  // A native step cannot be pre-empted: cancellation is observed between steps.
  Effect.tryPromise({
    try: () => addon.step(handle, windows.tokens, train, windows.targets),
    catch: (cause) => new TrainingFailed({ reason: "a training step failed", cause })
  }).pipe(Effect.uninterruptible)

/**
 * Fine-tunes every weight of an F32 model with llama.cpp's AdamW over packed windows of its training context, one
 * step per batch, learning only each example's targets (in chat data, the assistant's turns); validation loss after each epoch drives early stopping and picks the weights written to `out`.
 */
export const train = Effect.fn("train")(function*(options: TrainOptions) {
  yield* requireF32(options.modelPath)
  const tokenizer = yield* loadExampleTokenizer(options.modelPath)
  yield* Effect.addFinalizer(() => tokenizer.dispose)
  const addon = yield* loadTrainerAddon
  const handle = yield* Effect.try({
    try: () => addon.open(options.resumeFrom?.checkpoint ?? options.modelPath, options.threads, 0),
    catch: (cause) => new TrainerUnavailable({ reason: cause instanceof Error ? cause.message : String(cause) })
  })
  // Freed when the run ends, however it ends (a step in flight finishes first: steps are uninterruptible).
  yield* Effect.addFinalizer(() => Effect.try(() => addon.close(handle)).pipe(Effect.ignore))
  const { contextLength } = addon.info(handle)
  const split = options.validation === undefined
    ? splitValidation(options.examples, options.validationSplit ?? 0)
    : { train: options.examples, validation: options.validation }
  const trainWindows = packWindows(split.train.map(tokenizer.encode), contextLength)
  if (trainWindows.length === 0) {
    return yield* new DatasetTooSmall({ tokens: split.train.map(tokenizer.tokens).flat().length, contextLength })
  }
  const validationWindows = packWindows(split.validation.map(tokenizer.encode), contextLength)
  const stepsPerEpoch = Math.ceil(trainWindows.length / options.batchSize)
  const totalSteps = stepsPerEpoch * options.epochs
  const checkpoints: Array<string> = []
  const epochLosses: Array<number> = []
  const validationLosses: Array<number> = []
  const bestPath = options.checkpointDir === undefined ? `${options.out}.best` : path.join(options.checkpointDir, "best.gguf")
  let best: number | undefined
  let bestEpoch: number | undefined
  let epochsWithoutImprovement = 0
  const resumeStep = Math.min(options.resumeFrom?.step ?? 0, totalSteps)
  let step = 0
  let tokensDone = 0
  let stoppedBecause: TrainingResult["stoppedBecause"] = "completed"
  const started = performance.now()

  // Each checkpoint is saved, read back and recorded with its checksum in a sidecar, evaluated on the validation set
  // (so that the best can be kept), and the ones no longer among the kept are deleted.
  const kept: Array<CheckpointInfo> = []
  let epochNow = 1
  let epochLoss = { sum: 0, steps: 0 }
  let validatedAt: { readonly step: number; readonly loss: number } | undefined
  const checkpoint = Effect.gen(function*() {
    if (options.checkpointDir === undefined) return
    const saved = yield* saveAtomically(addon, handle, path.join(options.checkpointDir, `step-${step}.gguf`))
    const validationLoss = validationWindows.length === 0
      ? undefined
      : validatedAt?.step === step
      ? validatedAt.loss
      : (yield* runStep(addon, handle, concat(validationWindows), false)).loss
    const info = yield* recordCheckpoint(saved, {
      step,
      epoch: epochNow,
      trainLoss: epochLoss.sum / Math.max(epochLoss.steps, 1),
      ...(validationLoss === undefined ? {} : { validationLoss })
    }).pipe(Effect.mapError((cause) => new TrainingFailed({ reason: cause.message, cause })))
    kept.push(info)
    const keep = checkpointsToKeep(kept, options.keepCheckpoints ?? 3)
    for (const dropped of kept.filter((candidate) => !keep.includes(candidate))) yield* removeCheckpoint(dropped.path)
    kept.splice(0, kept.length, ...keep)
    checkpoints.splice(0, checkpoints.length, ...keep.map((candidate) => candidate.path))
    yield* options.onProgress({ _tag: "Checkpoint", step, path: saved, epoch: epochNow, sha256: info.sha256, trainLoss: info.trainLoss, validationLoss })
  })

  for (let epoch = 1; epoch <= options.epochs; epoch++) {
    // A resumed run skips the epochs it finished.
    if (epoch * stepsPerEpoch <= resumeStep) {
      step = epoch * stepsPerEpoch
      continue
    }
    epochNow = epoch
    epochLoss = { sum: 0, steps: 0 }
    for (const batch of batches(trainWindows, options.batchSize)) {
      if (step < resumeStep) {
        step++
        continue
      }
      const learningRate = learningRateAt(options.schedule, options.learningRate, step, totalSteps)
      addon.setOptimizer(handle, learningRate, options.weightDecay)
      const result = yield* runStep(addon, handle, concat(batch), true)
      step++
      tokensDone += result.tokens
      epochLoss = { sum: epochLoss.sum + result.loss, steps: epochLoss.steps + 1 }
      const seconds = (performance.now() - started) / 1000
      const tokensPerSecond = tokensDone / Math.max(seconds, 1e-9)
      const stepsThisRun = step - resumeStep
      yield* options.onProgress({
        _tag: "Step",
        epoch,
        step,
        totalSteps,
        loss: result.loss,
        accuracy: result.accuracy,
        learningRate,
        tokensPerSecond,
        etaSeconds: (totalSteps - step) * seconds / stepsThisRun
      })
      const periodic = options.checkpointEvery > 0 && step % options.checkpointEvery === 0 && step % stepsPerEpoch !== 0
      if (periodic) yield* checkpoint
      if (options.stopRequested !== undefined && (yield* options.stopRequested)) {
        if (!periodic) yield* checkpoint
        return yield* new TrainingStopped({ step, checkpoint: checkpoints.at(-1) })
      }
    }
    const trainLoss = epochLoss.sum / Math.max(epochLoss.steps, 1)
    epochLosses.push(trainLoss)
    let validationLoss: number | undefined
    let validationAccuracy: number | undefined
    if (validationWindows.length > 0) {
      const result = yield* runStep(addon, handle, concat(validationWindows), false)
      validationLoss = result.loss
      validationAccuracy = result.accuracy
      validationLosses.push(result.loss)
      validatedAt = { step, loss: result.loss }
    }
    yield* options.onProgress({ _tag: "Epoch", epoch, trainLoss, validationLoss, validationAccuracy })
    yield* checkpoint
    if (validationLoss !== undefined) {
      if (best === undefined || validationLoss < best - options.minDelta) {
        best = validationLoss
        bestEpoch = epoch
        epochsWithoutImprovement = 0
        yield* saveAtomically(addon, handle, bestPath)
      } else {
        epochsWithoutImprovement++
        if (options.patience !== undefined && epochsWithoutImprovement >= options.patience) {
          stoppedBecause = "early-stopping"
          break
        }
      }
    }
  }

  // With validation data the best weights by validation loss are the result; without, the last ones.
  if (best !== undefined) {
    yield* Effect.tryPromise({
      try: async () => {
        await fs.mkdir(path.dirname(path.resolve(options.out)), { recursive: true })
        await fs.copyFile(bestPath, `${options.out}.partial`)
        await fs.rename(`${options.out}.partial`, options.out)
        if (options.checkpointDir === undefined) await fs.rm(bestPath, { force: true })
      },
      catch: (cause) => new TrainingFailed({ reason: `cannot write ${options.out}`, cause })
    })
  } else {
    yield* saveAtomically(addon, handle, options.out)
  }
  return {
    out: options.out,
    steps: step,
    epochs: epochLosses.length,
    stoppedBecause,
    epochLosses,
    validationLosses,
    bestValidationLoss: best,
    bestEpoch,
    stopReason: stoppedBecause === "early-stopping"
      ? `validation loss ${validationLosses.at(-1)?.toFixed(4)} at epoch ${epochLosses.length}: no improvement for ` +
        `${options.patience} epoch(s) on the best, ${best?.toFixed(4)} at epoch ${bestEpoch} (min delta ${options.minDelta}); ` +
        `the result is epoch ${bestEpoch}'s weights`
      : `completed ${epochLosses.length} epoch(s)` + (bestEpoch === undefined ? "" : `; the result is epoch ${bestEpoch}'s weights, the best by validation loss`),
    checkpoints,
    keptCheckpoints: kept
  } satisfies TrainingResult
}, Effect.scoped)
