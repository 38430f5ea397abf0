/** An integer of at most 16 digits: no fraction, no exponent, so it parses to an integer. */
const integerGbnf = '"-"? ("0" | [1-9] [0-9]{0,15})'
/** At most 16 digits either side of the point and a two-digit exponent: always finite (below 1e116). */
const numberGbnf = `${integerGbnf} ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?`
/** A calendar date: days past the end of their month never come out (29 February is left out, having no year rule). */
const dateGbnf = '[0-9]{4} "-" (("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) | ' +
  '("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30") | "02" "-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))'
const timeGbnf = '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{3})? ("Z" | ("+" | "-") ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])'
const quoted = (body: string) => `"\\"" ${body} "\\""`

/**
 * Rules that replace node-llama-cpp's own (3.22.1) where its output would not hold: its integer rule allows an
 * exponent of up to 16 digits (`5E2025000202422024` parses to Infinity), its number rules likewise, and its date rule
 * allows 31 February. Keyed by rule name, as node-llama-cpp and llama.cpp's `json.gbnf` name them.
 */
const hardenedRules: Readonly<Record<string, string>> = {
  "integer-number-rule": integerGbnf,
  "fractional-number-rule": numberGbnf,
  "string-format-date-rule": quoted(dateGbnf),
  "string-format-time-rule": quoted(timeGbnf),
  "string-format-date-time-rule": quoted(`${dateGbnf} "T" ${timeGbnf}`),
  // llama.cpp's json.gbnf (for `json_object`): the same unbounded exponent, and an unbounded fraction.
  number: `${numberGbnf} ws`
}

/** `gbnf` with its number and date rules replaced by ones whose output always parses to finite, valid values. */
export const hardenGbnf = (gbnf: string): string =>
  gbnf.replace(/^([a-z][a-z0-9-]*)(\s*::=)[^\n]*$/gm, (line, name: string, assign: string) => {
    const rule = hardenedRules[name]
    return rule === undefined ? line : `${name}${assign} ${rule}`
  })
