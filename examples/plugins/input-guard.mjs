// Weft plugin: refuses requests whose input holds a blocked keyword or is too long, before they take a slot.
// Load it with `weft serve --plugin examples/plugins/input-guard.mjs`; configure it with
//   WEFT_GUARD_BLOCKED   comma-separated words or phrases, matched case-insensitively (default: none)
//   WEFT_GUARD_MAX_CHARS the most characters of input text a request may carry (default 8000)
// The client gets OpenAI's error shape: 400 `input_blocked` or 400 `input_too_long`.

// Read by `setup`, when a server starts with the plugin, not when the file is imported: a process imports a module
// once, and a later server in it (an embedding program, a test) would otherwise keep the first one's settings.
let blocked = []
let maxChars = 8000
let counts = { checked: 0, blocked: 0, tooLong: 0, completionTokens: 0 }

/** Every piece of input text in a chat or completions body. */
const textsOf = (body) => {
  const texts = []
  const add = (value) => {
    if (typeof value === "string") texts.push(value)
    else if (Array.isArray(value)) value.forEach(add)
    else if (value && typeof value === "object" && typeof value.text === "string") texts.push(value.text)
  }
  for (const message of Array.isArray(body?.messages) ? body.messages : []) add(message?.content)
  add(body?.prompt)
  return texts
}

export default {
  name: "input-guard",
  version: "1.0.0",
  timeoutMs: 100,
  setup() {
    blocked = (process.env.WEFT_GUARD_BLOCKED ?? "")
      .split(",")
      .map((word) => word.trim().toLowerCase())
      .filter((word) => word !== "")
    maxChars = Number(process.env.WEFT_GUARD_MAX_CHARS ?? 8000)
    counts = { checked: 0, blocked: 0, tooLong: 0, completionTokens: 0 }
  },
  beforeRequest({ body }) {
    counts.checked++
    const texts = textsOf(body)
    const length = texts.reduce((sum, text) => sum + text.length, 0)
    if (length > maxChars) {
      counts.tooLong++
      return { reject: { status: 400, message: `The input is ${length} characters long; this server accepts at most ${maxChars}.`, code: "input_too_long" } }
    }
    const lower = texts.join("\n").toLowerCase()
    const word = blocked.find((one) => lower.includes(one))
    if (word !== undefined) {
      counts.blocked++
      return { reject: { status: 400, message: "The input contains a blocked term.", code: "input_blocked" } }
    }
    return undefined
  },
  afterRequest({ usage }) {
    counts.completionTokens += usage.completionTokens
  },
  routes: {
    "GET /stats": () => ({ body: { ...counts, blocked: counts.blocked, maxChars, terms: blocked.length } })
  }
}
