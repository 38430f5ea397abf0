import { FastCheck as fc } from "effect"

/** What a hostile generator may produce; `huge` strings and `depth` are the knobs the real-model run turns down. */
export interface HostileLimits {
  /** Longest generated string, in characters (a 6-byte escape each for NUL). */
  readonly maxStringLength: number
  /** Deepest generated array/object nesting. */
  readonly maxDepth: number
  /** Largest `minItems`/`minLength`/`maxItems` in generated schemas. */
  readonly maxSchemaCount: number
}

/** The sizes: strings up to 1 MB, nesting up to 5,000 deep, schema counts up to 5,000. */
export const hostileLimits: HostileLimits = { maxStringLength: 1 << 20, maxDepth: 5000, maxSchemaCount: 5000 }

/** Texts that are expensive or awkward for tokenizers, escapers and grammar builders. */
const awkwardUnits = ["\n", "ÿ", "<s>", "</s>", "<|im_start|>", "\u0000", "\"", "\\", "🙂", "\ud800", "a", " ", "{{", "%s"]

/** A string: short and random, or one awkward unit repeated up to the length limit. */
export const hostileString = (limits: HostileLimits): fc.Arbitrary<string> =>
  fc.oneof(
    { weight: 4, arbitrary: fc.string({ maxLength: 40, unit: "binary" }) },
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.constantFrom(...awkwardUnits), fc.integer({ min: 0, max: limits.maxStringLength }))
        .map(([unit, length]) => unit.repeat(Math.max(0, Math.floor(length / unit.length))))
    }
  )

/** Arrays or objects nested `depth` deep around a leaf, built without recursion. */
const nested = (depth: number, kind: "array" | "object" | "mixed", leaf: unknown): unknown => {
  let value = leaf
  for (let level = 0; level < depth; level++) {
    value = kind === "array" || (kind === "mixed" && level % 2 === 0) ? [value] : { a: value }
  }
  return value
}

/** Deeply nested JSON. */
export const deepValue = (limits: HostileLimits): fc.Arbitrary<unknown> =>
  fc
    .tuple(fc.integer({ min: 1, max: limits.maxDepth }), fc.constantFrom("array" as const, "object" as const, "mixed" as const), fc.jsonValue({ maxDepth: 1 }))
    .map(([depth, kind, leaf]) => nested(depth, kind, leaf))

/** Numbers a range check or an integer check might mishandle. */
const awkwardNumber = fc.oneof(
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.integer(),
  fc.constantFrom(0, -0, -1, 1, 2, 1e308, -1e308, 2 ** 53, 2 ** 53 + 2, 1e-320, 0.5, 4294967296, 2147483648)
)

/** Any JSON value, with a bias towards the hostile ones. */
export const anyValue = (limits: HostileLimits): fc.Arbitrary<unknown> =>
  fc.oneof(
    { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
    { weight: 2, arbitrary: hostileString(limits) },
    { weight: 1, arbitrary: deepValue(limits) },
    { weight: 2, arbitrary: awkwardNumber },
    { weight: 1, arbitrary: fc.constantFrom(null, true, false, [], {}) }
  )

/** A property name, sometimes with NUL or other control characters in it. */
const propertyName = fc.oneof(
  fc.string({ maxLength: 8 }),
  fc.constantFrom("a", "b", "na\u0000me", "\u0000", "", "$ref", "__proto__", "constructor", "a b", "ünï")
)

const schemaCount = (limits: HostileLimits) =>
  fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: limits.maxSchemaCount }), fc.constantFrom(-1, 1.5, 1e9))

/** `$defs` whose references go round in a circle with nothing concrete (`a → a`, `a → b → a`). */
const refCycle = fc.constantFrom(
  { $ref: "#/$defs/a", $defs: { a: { $ref: "#/$defs/a" } } },
  { $ref: "#/$defs/a", $defs: { a: { $ref: "#/$defs/b" }, b: { $ref: "#/$defs/a" } } },
  { type: "object", properties: { x: { $ref: "#" } }, required: ["x"] },
  { $ref: "#" },
  { $ref: "#/definitions/missing" },
  { $ref: "http://example.com/remote.json" },
  { $ref: "#/$defs/a", $defs: { a: { anyOf: [{ $ref: "#/$defs/a" }] } } }
)

/** JSON schemas from plain to hostile: huge counts, NUL in names, enums and consts, reference cycles, deep nesting. */
export const hostileSchema = (limits: HostileLimits): fc.Arbitrary<unknown> => {
  const { schema } = fc.letrec<{ schema: unknown }>((tie) => ({
    schema: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      fc.constantFrom({ type: "string" }, { type: "integer" }, { type: "number" }, { type: "boolean" }, { type: "null" }, {}, true, false),
      fc.record(
        { type: fc.constant("string"), minLength: schemaCount(limits), maxLength: schemaCount(limits) },
        { requiredKeys: ["type"] }
      ),
      fc.record(
        { type: fc.constant("array"), items: tie("schema"), minItems: schemaCount(limits), maxItems: schemaCount(limits) },
        { requiredKeys: ["type"] }
      ),
      fc.record(
        {
          type: fc.constant("object"),
          properties: fc.dictionary(propertyName, tie("schema"), { maxKeys: 4 }),
          required: fc.array(propertyName, { maxLength: 3 }),
          additionalProperties: fc.oneof(fc.boolean(), tie("schema"))
        },
        { requiredKeys: ["type"] }
      ),
      fc.record({ enum: fc.array(fc.oneof(fc.string(), fc.constant("\u0000"), fc.constant("a\u0000b"), fc.integer(), fc.constant(null)), { maxLength: 4 }) }),
      fc.record({ const: fc.oneof(fc.string(), fc.constant("nul\u0000"), fc.jsonValue({ maxDepth: 2 })) }),
      fc.record({ anyOf: fc.array(tie("schema"), { maxLength: 3 }) }),
      fc.record({ oneOf: fc.array(tie("schema"), { maxLength: 3 }) }),
      fc.record({ allOf: fc.array(tie("schema"), { maxLength: 3 }) }),
      fc.record({ type: fc.constant("string"), pattern: fc.constantFrom("^a+$", "(", "\u0000", "[") }),
      refCycle,
      fc.record({ type: fc.oneof(fc.constantFrom("strnig", ["string", "null"], 5, null), fc.string()) }),
      fc.tuple(fc.integer({ min: 1, max: limits.maxDepth }), fc.constantFrom("array", "object")).map(([depth, kind]) => {
        let schema: unknown = { type: "string" }
        for (let level = 0; level < depth; level++) {
          schema = kind === "array" ? { type: "array", items: schema } : { type: "object", properties: { a: schema }, required: ["a"] }
        }
        return schema
      }),
      anyValue(limits)
    )
  }))
  return schema
}

const responseFormat = (limits: HostileLimits) =>
  fc.oneof(
    { weight: 1, arbitrary: fc.constant({ type: "text" }) },
    { weight: 1, arbitrary: fc.constant({ type: "json_object" }) },
    {
      weight: 6,
      arbitrary: fc.record(
        {
          type: fc.constant("json_schema"),
          json_schema: fc.record({ name: fc.string({ maxLength: 10 }), schema: hostileSchema(limits), strict: fc.boolean() }, { requiredKeys: ["schema"] })
        },
        { requiredKeys: ["type", "json_schema"] }
      )
    },
    { weight: 1, arbitrary: fc.record({ type: anyValue(limits), json_schema: anyValue(limits) }) }
  )

const content = (limits: HostileLimits) =>
  fc.oneof(
    { weight: 4, arbitrary: hostileString(limits) },
    { weight: 1, arbitrary: fc.array(fc.record({ type: fc.constant("text"), text: hostileString(limits) }), { maxLength: 3 }) }
  )

const message = (limits: HostileLimits) =>
  fc.record(
    { role: fc.constantFrom("system", "developer", "user", "assistant"), content: content(limits), name: fc.string({ maxLength: 10 }) },
    { requiredKeys: ["role", "content"] }
  )

/**
 * The fields both endpoints share, each absent or valid (strings and schemas still hostile); `withHostileFields`
 * then spoils a few. Timeouts are left out: a 1 ms budget is a fair 504.
 */
const sharedFields = (limits: HostileLimits, model: string) => ({
  model: fc.constant(model),
  max_tokens: fc.integer({ min: 1, max: 12 }),
  max_completion_tokens: fc.integer({ min: 1, max: 12 }),
  temperature: fc.double({ min: 0, max: 2, noNaN: true }),
  top_p: fc.double({ min: 0, max: 1, noNaN: true }),
  top_k: fc.integer({ min: 0, max: 100 }),
  min_p: fc.double({ min: 0, max: 1, noNaN: true }),
  stop: fc.oneof(hostileString(limits), fc.array(hostileString(limits), { maxLength: 16 })),
  seed: fc.integer(),
  n: fc.constant(1),
  stream: fc.boolean(),
  stream_options: fc.record({ include_usage: fc.boolean() }),
  response_format: responseFormat(limits),
  presence_penalty: fc.double({ min: -2, max: 2, noNaN: true }),
  repeat_penalty: fc.double({ min: 0, max: 10, noNaN: true }),
  ignore_eos: fc.boolean(),
  priority: fc.oneof(fc.integer(), fc.constantFrom("high", "normal", "low")),
  cache_salt: fc.string({ maxLength: 8 }),
  user: fc.string({ maxLength: 8 })
})

/** A body of `fields`, with up to three of its known fields (or unknown ones) replaced by anything at all. */
const withHostileFields = (limits: HostileLimits, fields: Record<string, fc.Arbitrary<unknown>>, required: ReadonlyArray<string>) => {
  const names = [...Object.keys(fields), "session_id", "unknown_field"]
  return fc
    .tuple(
      fc.record(fields, { requiredKeys: required as Array<string> }),
      fc.oneof(fc.constant([]), fc.array(fc.tuple(fc.constantFrom(...names), anyValue(limits)), { minLength: 1, maxLength: 3 }))
    )
    .map(([body, spoiled]) => ({ ...body, ...Object.fromEntries(spoiled) }))
}

/** A `/v1/chat/completions` body: known fields absent, valid or hostile, or not an object at all. */
export const hostileChatBody = (limits: HostileLimits, model: string): fc.Arbitrary<unknown> =>
  fc.oneof(
    {
      weight: 12,
      arbitrary: withHostileFields(
        limits,
        { ...sharedFields(limits, model), messages: fc.array(message(limits), { minLength: 1, maxLength: 4 }) },
        ["model", "messages", "max_tokens"]
      )
    },
    { weight: 1, arbitrary: anyValue(limits) }
  )

/** A `/v1/completions` body: known fields absent, valid or hostile, or not an object at all. */
export const hostileCompletionBody = (limits: HostileLimits, model: string): fc.Arbitrary<unknown> =>
  fc.oneof(
    {
      weight: 12,
      arbitrary: withHostileFields(
        limits,
        { ...sharedFields(limits, model), prompt: fc.oneof(hostileString(limits), fc.array(hostileString(limits), { minLength: 1, maxLength: 3 })) },
        ["model", "prompt", "max_tokens"]
      )
    },
    { weight: 1, arbitrary: anyValue(limits) }
  )

/** A body that must succeed, to check the server still serves after a hostile one. */
export const normalChatBody = (model: string) => ({ model, messages: [{ role: "user", content: "hello" }], max_tokens: 3 })

/**
 * `JSON.stringify` without recursion: hostile bodies nest thousands of levels, past what the stack of a busy test
 * worker holds. Plain JSON values only (what the generators make).
 */
export const stringifyDeep = (value: unknown): string => {
  const out: Array<string> = []
  // Each entry is either a value still to write or a piece of punctuation.
  const pending: Array<{ readonly value: unknown } | string> = [{ value }]
  while (pending.length > 0) {
    const next = pending.pop()!
    if (typeof next === "string") {
      out.push(next)
      continue
    }
    const current = next.value
    if (Array.isArray(current)) {
      const parts: Array<{ readonly value: unknown } | string> = ["["]
      current.forEach((item, index) => parts.push(...(index > 0 ? [","] : []), { value: item === undefined ? null : item }))
      parts.push("]")
      pending.push(...parts.reverse())
    } else if (typeof current === "object" && current !== null) {
      const parts: Array<{ readonly value: unknown } | string> = ["{"]
      Object.entries(current).filter(([, item]) => item !== undefined).forEach(([key, item], index) =>
        parts.push(`${index > 0 ? "," : ""}${JSON.stringify(key)}:`, { value: item })
      )
      parts.push("}")
      pending.push(...parts.reverse())
    } else {
      out.push(JSON.stringify(current) ?? "null")
    }
  }
  return out.join("")
}
