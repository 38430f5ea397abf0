/** How many characters of a client's value an error message quotes. */
const quoteLimit = 100

/** `text` cut to its first `limit` characters, then "…"; a cut never splits a surrogate pair. */
export const shorten = (text: string, limit: number = quoteLimit): string => {
  if (text.length <= limit) return text
  const cut = /[\uD800-\uDBFF]/.test(text.charAt(limit - 1)) ? limit - 1 : limit
  return `${text.slice(0, cut)}…`
}

/** A value as JSON for an error message: at most a short prefix of it, so a message never echoes a whole body. */
export const quoteValue = (value: unknown): string => {
  try {
    return shorten(JSON.stringify(value) ?? String(value))
  } catch {
    // Values from JSON.parse always stringify; anything else (a cycle, a bigint) is only named.
    return `a ${typeof value}`
  }
}
