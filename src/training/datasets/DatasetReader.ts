import { parse as parseCsv } from "csv-parse/sync"
import { asyncBufferFromFile, parquetReadObjects } from "hyparquet"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { Effect } from "effect"
import { DatasetUnreadable, type RawRecord } from "./DatasetRecord.js"

/** The file types a dataset can be read from. */
export type DatasetFileType = "jsonl" | "json" | "csv" | "parquet"

const fileTypes: Readonly<Record<string, DatasetFileType>> = {
  ".jsonl": "jsonl",
  ".ndjson": "jsonl",
  ".json": "json",
  ".csv": "csv",
  ".parquet": "parquet"
}

/** The file type named by `file`'s extension. */
export const datasetFileType = (file: string): DatasetFileType | undefined => fileTypes[path.extname(file).toLowerCase()]

const describe = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

const parsed = (value: unknown): RawRecord["value"] => ({ _tag: "Parsed", value })

/** One record per non-blank line; a line that is not JSON is a record that could not be parsed. */
export const readJsonLines = (text: string): Array<RawRecord> =>
  text.split(/\r?\n/).flatMap((line, at): Array<RawRecord> => {
    if (line.trim() === "") return []
    const location = { unit: "line", index: at + 1 } as const
    try {
      return [{ location, value: parsed(JSON.parse(line)) }]
    } catch (cause) {
      return [{ location, value: { _tag: "Unparsable", reason: `not valid JSON: ${describe(cause)}` } }]
    }
  })

/** A JSON array of records, or an object holding one array (`{"data": [...]}`); items are numbered from 1. */
export const readJson = (text: string): Array<RawRecord> | string => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (cause) {
    return `not valid JSON: ${describe(cause)}`
  }
  const arrays = typeof value === "object" && value !== null && !Array.isArray(value)
    ? Object.values(value).filter(Array.isArray)
    : []
  const items = Array.isArray(value) ? value : arrays.length === 1 ? arrays[0]! : undefined
  if (items === undefined) return "a JSON dataset is an array of records (or an object holding one array)"
  return items.map((item: unknown, at) => ({ location: { unit: "item", index: at + 1 }, value: parsed(item) }))
}

/**
 * CSV with a header row; rows are numbered from 1 after the header, with the line each starts on (quoted cells may
 * span lines). Cells holding JSON arrays or objects (a `messages` column) are parsed.
 */
export const readCsv = (text: string): Array<RawRecord> | string => {
  let rows: Array<{ record: Record<string, string>; info: { lines: number } }>
  try {
    rows = parseCsv(text, { columns: true, skip_empty_lines: true, bom: true, info: true, relax_column_count: false })
  } catch (cause) {
    return describe(cause)
  }
  let previousEnd = 1
  return rows.map(({ info, record }, at) => {
    // info.lines is the line the row ends on; it starts after the previous row (and blank lines are skipped).
    const startLine = at === 0 ? 2 : previousEnd + 1
    previousEnd = info.lines
    const value: Record<string, unknown> = {}
    for (const [column, cell] of Object.entries(record)) value[column] = jsonCell(cell)
    return { location: { unit: "row", index: at + 1, line: startLine }, value: parsed(value) }
  })
}

const jsonCell = (cell: string): unknown => {
  const trimmed = cell.trim()
  if (!(trimmed.startsWith("[") || trimmed.startsWith("{"))) return cell
  try {
    return JSON.parse(trimmed)
  } catch {
    return cell
  }
}

/** Parquet rows as objects, numbered from 1; BigInt cells become numbers. */
export const readParquet = (file: string): Promise<Array<RawRecord>> =>
  asyncBufferFromFile(file).then((buffer) => parquetReadObjects({ file: buffer })).then((rows) =>
    rows.map((row, at) => ({ location: { unit: "row", index: at + 1 }, value: parsed(plainValue(row)) }))
  )

const plainValue = (value: unknown): unknown => {
  if (typeof value === "bigint") return Number(value)
  if (Array.isArray(value)) return value.map(plainValue)
  if (typeof value === "object" && value !== null && !(value instanceof Date) && !(value instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, plainValue(inner)]))
  }
  return value
}

/** Every record of a dataset file, by its extension. */
export const readDatasetFile = Effect.fn("readDatasetFile")(function*(file: string) {
  const unreadable = (reason: string) => new DatasetUnreadable({ path: file, reason })
  const type = datasetFileType(file)
  if (type === undefined) {
    return yield* unreadable(`unknown file type "${path.extname(file)}" (use .jsonl, .json, .csv or .parquet)`)
  }
  if (type === "parquet") {
    return yield* Effect.tryPromise({ try: () => readParquet(file), catch: (cause) => unreadable(describe(cause)) })
  }
  const text = yield* Effect.tryPromise({ try: () => fs.readFile(file, "utf8"), catch: (cause) => unreadable(describe(cause)) })
  const records = type === "jsonl" ? readJsonLines(text) : type === "json" ? readJson(text) : readCsv(text)
  if (typeof records === "string") return yield* unreadable(records)
  return records
})
