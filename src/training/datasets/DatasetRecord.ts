import { Schema } from "effect"

/** Where a record sits in its file: a JSONL line, a JSON array item, a CSV or Parquet row (all 1-based). */
export interface RecordLocation {
  readonly unit: "line" | "item" | "row"
  readonly index: number
  /** The file line a CSV row or JSON item starts on, where the reader knows it. */
  readonly line?: number
}

/** One record as read from a file, before any format is checked. */
export interface RawRecord {
  readonly location: RecordLocation
  /** The parsed value, or the reason it could not be parsed. */
  readonly value: { readonly _tag: "Parsed"; readonly value: unknown } | { readonly _tag: "Unparsable"; readonly reason: string }
}

/** One thing wrong with one record. */
export interface DatasetProblem {
  readonly location: RecordLocation
  /** The field at fault, as a path (`messages[2].role`); `(record)` for the record as a whole. */
  readonly field: string
  readonly message: string
}

/** A chat turn as training reads it. */
export interface TrainingMessage {
  readonly role: "system" | "user" | "assistant" | "tool"
  readonly content: string
}

/** A record every format is normalised to: a conversation, a prompt with its completion, or plain text. */
export type TrainingExample =
  | { readonly _tag: "Chat"; readonly messages: ReadonlyArray<TrainingMessage> }
  | { readonly _tag: "Completion"; readonly prompt: string; readonly completion: string }
  | { readonly _tag: "Text"; readonly text: string }

/** The record formats a dataset can be in. */
export const DatasetFormat = Schema.Literal("chat", "completion", "instruction", "sharegpt", "text")
export type DatasetFormat = typeof DatasetFormat.Type

/** A dataset file could not be read at all (missing, unknown type, not JSON/CSV/Parquet). */
export class DatasetUnreadable extends Schema.TaggedError<DatasetUnreadable>()("DatasetUnreadable", {
  path: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `cannot read dataset ${this.path}: ${this.reason}`
  }
}

/** `line 3`, `row 7 (line 9)`, `item 2`. */
export const formatLocation = (location: RecordLocation): string =>
  `${location.unit} ${location.index}${location.unit !== "line" && location.line !== undefined ? ` (line ${location.line})` : ""}`
