import type { SqlClient } from "@effect/sql"

/** How a text value that may hold NUL is written to a column and read back. */
export interface TextCodec {
  readonly encode: (text: string) => string
  readonly decode: (stored: string) => string
}

const identity: TextCodec = { encode: (text) => text, decode: (stored) => stored }

// `\` becomes `\\` and NUL becomes `\0`: one-to-one, so distinct values stay distinct (an owner check stays exact).
const escaped: TextCodec = {
  encode: (text) => text.replaceAll("\\", "\\\\").replaceAll("\u0000", "\\0"),
  decode: (stored) => stored.replace(/\\([\\0])/g, (_, escape: string) => (escape === "0" ? "\u0000" : "\\"))
}

/**
 * The codec for text that may hold NUL (tenant owners and cache keys start with one) on this database: Postgres text
 * cannot hold NUL, so there it is escaped; SQLite stores it as it is, as databases made before Postgres did.
 */
export const nulSafeText = (sql: SqlClient.SqlClient): TextCodec => sql.onDialectOrElse({ pg: () => escaped, orElse: () => identity })
