import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Option, Schema } from "effect"
import { DatasetFormat, formatLocation } from "../training/datasets/DatasetRecord.js"
import { type DatasetReport, type TokenCounter, validateDataset } from "../training/datasets/DatasetValidator.js"
import { loadExampleTokenizer } from "../training/ExampleTokenizer.js"

/** A dataset has problems (they were printed). */
export class DatasetInvalid extends Schema.TaggedError<DatasetInvalid>()("DatasetInvalid", {
  file: Schema.String,
  problems: Schema.Number,
  valid: Schema.Number
}) {
  override get message(): string {
    return this.problems > 0
      ? `${this.file}: ${this.problems} problem${this.problems === 1 ? "" : "s"}`
      : `${this.file}: no valid records`
  }
}

const file = Args.file({ name: "FILE", exists: "yes" }).pipe(Args.withDescription("Dataset: .jsonl, .json, .csv or .parquet"))

const format = Options.choice("format", ["auto", ...DatasetFormat.literals]).pipe(
  Options.withDefault("auto" as const),
  Options.withDescription("Record format; auto detects it from the first record")
)

const model = Options.file("model", { exists: "yes" }).pipe(
  Options.optional,
  Options.withDescription("GGUF whose tokenizer and chat template give token-length statistics")
)

const json = Options.boolean("json").pipe(Options.withDescription("Print the report as JSON"))

/** The report without the examples themselves. */
const reportJson = ({ examples: _examples, ...report }: DatasetReport) => report

const round = (value: number) => Math.round(value * 10) / 10

const reportLines = (report: DatasetReport, formatGiven: boolean): ReadonlyArray<string> => [
  `${report.file}: ${report.fileType}, format ${report.format ?? "unknown"}${formatGiven ? "" : " (detected)"}`,
  `  records ${report.records}, valid ${report.valid}, invalid ${report.invalid}, duplicates ${report.duplicates.length}`,
  ...report.problems.map((problem) => `  ${formatLocation(problem.location)}  ${problem.field}: ${problem.message}`),
  ...report.duplicates.map((duplicate) => `  ${formatLocation(duplicate.location)}  duplicate of ${formatLocation(duplicate.firstAt)}`),
  ...(report.tokens === undefined ? [] : [
    `  tokens  total ${report.tokens.total}, min ${report.tokens.min}, mean ${round(report.tokens.mean)}, p50 ${report.tokens.p50}, p95 ${report.tokens.p95}, max ${report.tokens.max}`,
    `          ${report.tokens.overContext} longer than the model's context of ${report.tokens.contextLength}`
  ]),
  report.ok ? "OK" : "FAILED"
]

const validateCommand = Command.make("validate", { file, format, model, json }, (options) =>
  Effect.gen(function*() {
    const tokens: TokenCounter | undefined = Option.isSome(options.model)
      ? yield* loadExampleTokenizer(options.model.value).pipe(
        Effect.map((tokenizer): TokenCounter => ({ count: (example) => tokenizer.tokens(example).length, contextLength: tokenizer.contextLength }))
      )
      : undefined
    const report = yield* validateDataset(options.file, { format: options.format, tokens })
    if (options.json) yield* Console.log(JSON.stringify(reportJson(report), null, 2))
    else yield* Effect.forEach(reportLines(report, options.format !== "auto"), (line) => Console.log(line))
    if (!report.ok) return yield* new DatasetInvalid({ file: options.file, problems: report.problems.length, valid: report.valid })
  })).pipe(Command.withDescription("Check a fine-tuning dataset: every problem with its line or row, duplicates, token lengths"))

/** `weft dataset …`: fine-tuning datasets. */
export const datasetCommand = Command.make("dataset").pipe(
  Command.withDescription("Fine-tuning datasets"),
  Command.withSubcommands([validateCommand])
)
