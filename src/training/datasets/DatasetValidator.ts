import { Effect } from "effect"
import { validateChat } from "./ChatFormat.js"
import { validateCompletion } from "./CompletionFormat.js"
import { type DatasetFileType, datasetFileType, readDatasetFile } from "./DatasetReader.js"
import type { DatasetFormat, DatasetProblem, RawRecord, RecordLocation, TrainingExample } from "./DatasetRecord.js"
import type { FormatValidator } from "./FormatCheck.js"
import { typeName } from "./FormatCheck.js"
import { validateInstruction } from "./InstructionFormat.js"
import { validateShareGpt } from "./ShareGptFormat.js"
import { validateText } from "./TextFormat.js"

/** One validator per record format. */
export const formatValidators: { readonly [F in DatasetFormat]: FormatValidator } = {
  chat: validateChat,
  completion: validateCompletion,
  instruction: validateInstruction,
  sharegpt: validateShareGpt,
  text: validateText
}

/** The format a record's keys point to, most specific first. */
export const detectFormat = (record: Readonly<Record<string, unknown>>): DatasetFormat | undefined =>
  "messages" in record ? "chat"
  : "conversations" in record ? "sharegpt"
  : "instruction" in record ? "instruction"
  : "completion" in record || "prompt" in record ? "completion"
  : "text" in record ? "text"
  : undefined

/** Counts the tokens of an example as training will see them (chat through the model's template). */
export interface TokenCounter {
  readonly count: (example: TrainingExample) => number
  /** The model's training context: longer examples are cut. */
  readonly contextLength: number
}

/** Token lengths over the valid examples. */
export interface TokenStats {
  readonly total: number
  readonly min: number
  readonly max: number
  readonly mean: number
  readonly p50: number
  readonly p95: number
  readonly contextLength: number
  /** Examples longer than the context, which training truncates. */
  readonly overContext: number
}

/** A record equal to an earlier one. */
export interface DuplicateRecord {
  readonly location: RecordLocation
  readonly firstAt: RecordLocation
}

/** What validating a dataset file found. */
export interface DatasetReport {
  readonly file: string
  readonly fileType: DatasetFileType
  /** The format checked against: given, or detected from the first record. */
  readonly format: DatasetFormat | undefined
  readonly records: number
  readonly valid: number
  readonly invalid: number
  readonly problems: ReadonlyArray<DatasetProblem>
  readonly duplicates: ReadonlyArray<DuplicateRecord>
  readonly tokens: TokenStats | undefined
  /** The valid examples, in file order. */
  readonly examples: ReadonlyArray<TrainingExample>
  /** No problems and at least one valid record. */
  readonly ok: boolean
}

/** How to validate. */
export interface ValidateOptions {
  readonly format: DatasetFormat | "auto"
  readonly tokens?: TokenCounter | undefined
}

const percentile = (sorted: ReadonlyArray<number>, fraction: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))]!

const tokenStats = (lengths: ReadonlyArray<number>, contextLength: number): TokenStats | undefined => {
  if (lengths.length === 0) return undefined
  const sorted = [...lengths].sort((a, b) => a - b)
  const total = sorted.reduce((sum, length) => sum + length, 0)
  return {
    total,
    min: sorted[0]!,
    max: sorted[sorted.length - 1]!,
    mean: total / sorted.length,
    p50: percentile(sorted, 0.5),
    p95: percentile(sorted, 0.95),
    contextLength,
    overContext: sorted.filter((length) => length > contextLength).length
  }
}

const isRecordObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

/** Checks already-read records: every problem with its record's location and field, duplicates, token lengths. */
export const validateRecords = (
  file: string,
  fileType: DatasetFileType,
  records: ReadonlyArray<RawRecord>,
  options: ValidateOptions
): DatasetReport => {
  const firstObject = records.find((record) => record.value._tag === "Parsed" && isRecordObject(record.value.value))
  const format = options.format !== "auto"
    ? options.format
    : firstObject?.value._tag === "Parsed" ? detectFormat(firstObject.value.value as Record<string, unknown>) : undefined
  const problems: Array<DatasetProblem> = []
  const duplicates: Array<DuplicateRecord> = []
  const examples: Array<TrainingExample> = []
  const lengths: Array<number> = []
  const seen = new Map<string, RecordLocation>()
  let invalid = 0
  for (const record of records) {
    const found = checkRecord(record, format)
    if (found._tag === "Invalid") {
      invalid++
      for (const problem of found.problems) problems.push({ location: record.location, ...problem })
      continue
    }
    const key = JSON.stringify(found.example)
    const firstAt = seen.get(key)
    if (firstAt !== undefined) duplicates.push({ location: record.location, firstAt })
    else seen.set(key, record.location)
    examples.push(found.example)
    if (options.tokens !== undefined) lengths.push(options.tokens.count(found.example))
  }
  if (records.length === 0) problems.push({ location: { unit: "line", index: 1 }, field: "(file)", message: "the dataset has no records" })
  return {
    file,
    fileType,
    format,
    records: records.length,
    valid: examples.length,
    invalid,
    problems,
    duplicates,
    tokens: options.tokens === undefined ? undefined : tokenStats(lengths, options.tokens.contextLength),
    examples,
    ok: problems.length === 0 && examples.length > 0
  }
}

const checkRecord = (record: RawRecord, format: DatasetFormat | undefined) => {
  if (record.value._tag === "Unparsable") return { _tag: "Invalid", problems: [{ field: "(record)", message: record.value.reason }] } as const
  const value = record.value.value
  if (!isRecordObject(value)) {
    return { _tag: "Invalid", problems: [{ field: "(record)", message: `must be an object, got ${typeName(value)}` }] } as const
  }
  if (format === undefined) {
    return {
      _tag: "Invalid",
      problems: [{ field: "(record)", message: "no known format: expected messages, conversations, prompt/completion, instruction/output or text" }]
    } as const
  }
  return formatValidators[format](value)
}

/** Reads and validates a dataset file; a file that cannot be read at all fails with `DatasetUnreadable`. */
export const validateDataset = Effect.fn("validateDataset")(function*(file: string, options: ValidateOptions) {
  const records = yield* readDatasetFile(file)
  return validateRecords(file, datasetFileType(file)!, records, options)
})
