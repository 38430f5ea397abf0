/** Ids a client may choose (session ids, `x-request-id`): 1–128 letters, digits, `.`, `_`, `:` or `-`, safe in headers and logs. */
export const safeIdPattern = /^[\w.:-]{1,128}$/

/** How `safeIdPattern` reads in an error message. */
export const safeIdDescription = "1–128 letters, digits, or . _ : -"
