import { Schema } from "effect"

/**
 * A number read from an integer column. SQLite returns a number; Postgres returns BIGINT (timestamps, counters,
 * `COUNT(*)`) as a string, since it may not fit a double. Every integer Weft stores does (milliseconds, token counts).
 */
export const SqlInteger = Schema.Union(Schema.Number, Schema.NumberFromString)
