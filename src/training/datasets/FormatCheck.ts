import type { TrainingExample } from "./DatasetRecord.js"

/** A field at fault and what is wrong with it. */
export interface FieldProblem {
  readonly field: string
  readonly message: string
}

/** What checking one record against a format found: its problems, or the example it holds. */
export type FormatCheck =
  | { readonly _tag: "Valid"; readonly example: TrainingExample }
  | { readonly _tag: "Invalid"; readonly problems: ReadonlyArray<FieldProblem> }

/** Checks one parsed record (already known to be an object) against one format. */
export type FormatValidator = (record: Readonly<Record<string, unknown>>) => FormatCheck

export const invalid = (...problems: ReadonlyArray<FieldProblem>): FormatCheck => ({ _tag: "Invalid", problems })

export const valid = (example: TrainingExample): FormatCheck => ({ _tag: "Valid", example })

/** A problem when `record[field]` is not a non-empty string (optional fields may be absent or null). */
export const stringField = (
  record: Readonly<Record<string, unknown>>,
  field: string,
  label: string = field,
  optional = false
): FieldProblem | undefined => {
  const value = record[field]
  if (value === undefined || value === null) return optional ? undefined : { field: label, message: "is missing" }
  if (typeof value !== "string") return { field: label, message: `must be a string, got ${typeName(value)}` }
  if (!optional && value.trim() === "") return { field: label, message: "is empty" }
  return undefined
}

/** `null`, `array`, `object`, `number`, … */
export const typeName = (value: unknown): string => value === null ? "null" : Array.isArray(value) ? "array" : typeof value

/** Invalid with the problems found, or valid with `example()` when there are none. */
export const checked = (
  problems: ReadonlyArray<FieldProblem | undefined>,
  example: () => TrainingExample
): FormatCheck => {
  const found = problems.filter((problem): problem is FieldProblem => problem !== undefined)
  return found.length > 0 ? invalid(...found) : valid(example())
}
