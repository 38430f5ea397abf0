import { Command, Options } from "@effect/cli"
import { Console, Effect, Option, Schema } from "effect"
import { DatasetFormat, formatLocation } from "../training/datasets/DatasetRecord.js"
import { validateDataset } from "../training/datasets/DatasetValidator.js"
import { train, type TrainingProgress } from "../training/Trainer.js"
import { DatasetInvalid } from "./DatasetCommand.js"

const model = Options.file("model", { exists: "yes" }).pipe(Options.withDescription("F32 GGUF to fine-tune"))
const data = Options.file("data", { exists: "yes" }).pipe(Options.withDescription("Training dataset (.jsonl, .json, .csv, .parquet)"))
const validation = Options.file("validation", { exists: "yes" }).pipe(
  Options.optional,
  Options.withDescription("Validation dataset: its loss after each epoch picks the best weights and drives --patience")
)
const validationSplit = Options.float("validation-split").pipe(
  Options.withSchema(Schema.Number.pipe(Schema.between(0, 0.5))),
  Options.withDefault(0),
  Options.withDescription("Without --validation: the fraction of --data held out as the validation set")
)
const format = Options.choice("format", ["auto", ...DatasetFormat.literals]).pipe(Options.withDefault("auto" as const))
const positive = Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))
const epochs = Options.integer("epochs").pipe(Options.withSchema(positive), Options.withDefault(3))
const batchSize = Options.integer("batch-size").pipe(
  Options.withSchema(positive),
  Options.withDefault(1),
  Options.withDescription("Context-length windows per step")
)
const learningRate = Options.float("learning-rate").pipe(Options.withSchema(Schema.Number.pipe(Schema.positive())), Options.withDefault(1e-3))
const schedule = Options.choice("schedule", ["constant", "linear", "cosine"]).pipe(Options.withDefault("cosine" as const))
const weightDecay = Options.float("weight-decay").pipe(Options.withSchema(Schema.Number.pipe(Schema.nonNegative())), Options.withDefault(0))
const threads = Options.integer("threads").pipe(Options.withSchema(positive), Options.withDefault(2))
const out = Options.file("out").pipe(Options.withDescription("Where to write the fine-tuned GGUF"))
const checkpointDir = Options.directory("checkpoint-dir").pipe(Options.optional, Options.withDescription("Where checkpoints go"))
const checkpointEvery = Options.integer("checkpoint-every").pipe(
  Options.withSchema(Schema.Int.pipe(Schema.nonNegative())),
  Options.withDefault(0),
  Options.withDescription("Also checkpoint every N steps (epoch ends always checkpoint)")
)
const keepCheckpoints = Options.integer("keep-checkpoints").pipe(
  Options.withSchema(Schema.Int.pipe(Schema.nonNegative())),
  Options.withDefault(3),
  Options.withDescription("Checkpoints to keep besides the latest: the best by validation loss (else the latest)")
)
const patience = Options.integer("patience").pipe(
  Options.withSchema(positive),
  Options.optional,
  Options.withDescription("Stop after this many epochs without validation improvement")
)
const minDelta = Options.float("min-delta").pipe(Options.withSchema(Schema.Number.pipe(Schema.nonNegative())), Options.withDefault(0))

const clock = (seconds: number): string => {
  const whole = Math.round(seconds)
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`
}

const bar = (done: number, total: number, width = 20): string => {
  const filled = Math.round((done / total) * width)
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`
}

/** One progress line per event; a step's line shows loss, accuracy, tokens/s and the ETA. */
export const progressLine = (event: TrainingProgress): string => {
  switch (event._tag) {
    case "Step":
      return `epoch ${event.epoch} step ${event.step}/${event.totalSteps} ${bar(event.step, event.totalSteps)} loss ${event.loss.toFixed(3)} ` +
        `acc ${event.accuracy.toFixed(2)} lr ${event.learningRate.toExponential(1)} ${Math.round(event.tokensPerSecond)} tok/s ETA ${clock(event.etaSeconds)}`
    case "Epoch":
      return `epoch ${event.epoch} done: train loss ${event.trainLoss.toFixed(3)}` +
        (event.validationLoss === undefined ? "" : `, validation loss ${event.validationLoss.toFixed(3)} acc ${event.validationAccuracy!.toFixed(2)}`)
    case "Checkpoint":
      return `checkpoint ${event.path} (epoch ${event.epoch}, sha256 ${event.sha256.slice(0, 12)}…` +
        (event.validationLoss === undefined ? ")" : `, validation loss ${event.validationLoss.toFixed(3)})`)
  }
}

const examplesOf = (file: string, chosen: DatasetFormat | "auto") =>
  Effect.gen(function*() {
    const report = yield* validateDataset(file, { format: chosen })
    if (!report.ok) {
      yield* Effect.forEach(report.problems, (problem) => Console.error(`${file}: ${formatLocation(problem.location)}  ${problem.field}: ${problem.message}`))
      return yield* new DatasetInvalid({ file, problems: report.problems.length, valid: report.valid })
    }
    return report.examples
  })

/** `weft train`: fine-tune an F32 GGUF on a dataset with llama.cpp's optimizer, printing progress. */
export const trainCommand = Command.make(
  "train",
  { model, data, validation, validationSplit, format, epochs, batchSize, learningRate, schedule, weightDecay, threads, out, checkpointDir, checkpointEvery, keepCheckpoints, patience, minDelta },
  (options) =>
    Effect.gen(function*() {
      const examples = yield* examplesOf(options.data, options.format)
      const validationExamples = Option.isSome(options.validation) ? yield* examplesOf(options.validation.value, options.format) : undefined
      const result = yield* train({
        modelPath: options.model,
        examples,
        validation: validationExamples,
        validationSplit: options.validationSplit,
        epochs: options.epochs,
        batchSize: options.batchSize,
        learningRate: options.learningRate,
        schedule: options.schedule,
        weightDecay: options.weightDecay,
        threads: options.threads,
        out: options.out,
        checkpointDir: Option.getOrUndefined(options.checkpointDir),
        checkpointEvery: options.checkpointEvery,
        keepCheckpoints: options.keepCheckpoints,
        patience: Option.getOrUndefined(options.patience),
        minDelta: options.minDelta,
        onProgress: (event) => Console.error(progressLine(event))
      })
      yield* Console.log(result.out)
      yield* Console.log(`  ${result.steps} steps, ${result.epochs} epochs, stopped: ${result.stoppedBecause} (${result.stopReason})`)
      yield* Console.log(`  epoch losses ${result.epochLosses.map((loss) => loss.toFixed(3)).join(" ")}`)
      if (result.bestValidationLoss !== undefined) yield* Console.log(`  best validation loss ${result.bestValidationLoss.toFixed(3)}`)
    })
).pipe(Command.withDescription("Fine-tune every weight of an F32 GGUF on a dataset (llama.cpp's AdamW), with checkpoints and early stopping"))
