// Weft plugin: redacts email addresses and phone numbers in generated text, streamed or not.
// Load it with `weft serve --plugin examples/plugins/pii-redaction.mjs`.
//
// A match may arrive split over many deltas ("john.d", "oe@exa", "mple.com"), so each choice's transform holds back
// the trailing run of characters that could still grow into one, and lets it out once it cannot (or at the end).
// It fails closed: if it ever breaks, requests fail rather than leak what it was meant to hide.

const EMAIL = /[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}/g
const PHONE = /(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])?\d{3,4}[\s.-]?\d{3,4}\b/g
const emailChar = /[A-Za-z0-9._%+@-]/
const phoneChar = /[\d\s().+-]/
/** Never hold back more than this: a longer run is let out (and redacted as far as it goes). */
const maxHeld = 256

let redactions = 0

const redact = (text) =>
  text.replace(EMAIL, () => (redactions++, "[email]")).replace(PHONE, () => (redactions++, "[phone]"))

/** Where the part that can no longer change ends: before a trailing run that may still become a match. */
const safeEnd = (text) => {
  let end = text.length
  while (end > 0 && emailChar.test(text[end - 1])) end--
  let start = end
  while (start > 0 && phoneChar.test(text[start - 1])) start--
  if (/\d/.test(text.slice(start, text.length))) end = Math.min(end, start)
  return Math.max(end, text.length - maxHeld)
}

export default {
  name: "pii-redaction",
  version: "1.0.0",
  failClosed: true,
  timeoutMs: 200,
  transformText: () => {
    let held = ""
    return {
      write(text) {
        held += text
        const end = safeEnd(held)
        const ready = held.slice(0, end)
        held = held.slice(end)
        return redact(ready)
      },
      end() {
        const rest = held
        held = ""
        return redact(rest)
      }
    }
  },
  routes: {
    "GET /stats": () => ({ body: { redactions } })
  }
}
