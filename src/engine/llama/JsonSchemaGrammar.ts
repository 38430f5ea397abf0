import { Either } from "effect"

/** Where a `response_format` JSON schema goes beyond what the grammar can enforce, and why. */
export interface SchemaProblem {
  /** JSON-pointer-like path inside the schema, e.g. `properties.age.minimum`. */
  readonly at: string
  readonly message: string
}

type Json = null | boolean | number | string | ReadonlyArray<Json> | { readonly [key: string]: Json }
type JsonObject = { readonly [key: string]: Json }

const scalarTypes = new Set(["string", "number", "integer", "boolean", "null"])
const allTypes = new Set([...scalarTypes, "object", "array"])
const stringFormats = new Set(["date-time", "time", "date"])
/** Keywords a grammar could not enforce here: rejected rather than silently ignored, so valid output stays valid. */
const unsupported = new Set([
  "allOf", "not", "if", "then", "else", "pattern", "patternProperties", "propertyNames", "minimum", "maximum",
  "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "contains", "minContains", "maxContains",
  "dependentRequired", "dependentSchemas", "dependencies", "unevaluatedProperties", "unevaluatedItems", "definitions"
])
const maxDepth = 64
/**
 * The most repetitions of one item llama.cpp's grammar parser takes (its `MAX_REPETITION_THRESHOLD` of 2,000 rule
 * copies, over the symbols node-llama-cpp repeats per item), measured on node-llama-cpp 3.22.1: `minLength` 1,000
 * builds and 1,001 fails; `minItems` and `minProperties` fail from 997 when a maximum is also given. Past these, a
 * grammar cannot be built; combinations below them that still fail are caught by building the grammar before admission.
 */
const maxRepetitions = { minLength: 1000, minItems: 995, minProperties: 995 } as const

const isObject = (value: Json | undefined): value is JsonObject =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const isCount = (value: Json | undefined) => typeof value === "number" && Number.isInteger(value) && value >= 0

class Problem {
  constructor(readonly at: string, readonly message: string) {}
}

const join = (at: string, key: string) => (at === "" ? key : `${at}.${key}`)

const fail = (at: string, message: string): never => {
  throw new Problem(at, message)
}

/**
 * Rewrites a JSON schema into the subset node-llama-cpp turns into a grammar (`anyOf` becomes `oneOf`, a type
 * list with object or array becomes a `oneOf`), or reports the first keyword it cannot enforce. Annotations
 * (`title`, `default`, `examples`, …) are dropped.
 */
export const toGrammarSchema = (schema: unknown): Either.Either<JsonObject, SchemaProblem> => {
  try {
    if (!isObject(schema as Json)) return Either.left({ at: "", message: "the schema must be a JSON object" })
    const declared: Array<DefsScope> = []
    const normalized = normalize(schema as JsonObject, "", [], 0, declared)
    checkRefCycles(declared)
    return Either.right(normalized)
  } catch (error) {
    if (error instanceof Problem) return Either.left({ at: error.at, message: error.message })
    // A chain of thousands of `$ref`s can outgrow the stack of the cycle check.
    if (error instanceof RangeError) return Either.left({ at: "", message: "the schema's references nest too deeply" })
    throw error
  }
}

const normalize = (
  node: JsonObject,
  at: string,
  scopes: ReadonlyArray<JsonObject>,
  depth: number,
  declared: Array<DefsScope>
): JsonObject => {
  if (depth > maxDepth) fail(at, `the schema nests deeper than ${maxDepth} levels`)
  for (const key of Object.keys(node)) {
    if (unsupported.has(key)) fail(join(at, key), `\`${key}\` is not supported in structured output schemas`)
  }
  const out: Record<string, Json> = {}
  const defs = node.$defs
  let inner = scopes
  if (defs !== undefined) {
    if (!isObject(defs)) fail(join(at, "$defs"), "`$defs` must be an object of schemas")
    inner = [...scopes, defs as JsonObject]
    declared.push({ defs: defs as JsonObject, at, scopes })
    const normalizedDefs: Record<string, Json> = {}
    for (const [name, def] of Object.entries(defs as JsonObject)) {
      if (!isObject(def)) fail(join(at, `$defs.${name}`), "each definition must be a schema object")
      normalizedDefs[name] = normalize(def as JsonObject, join(at, `$defs.${name}`), inner, depth + 1, declared)
    }
    out.$defs = normalizedDefs
  }
  const sub = (value: Json | undefined, path: string): JsonObject => {
    if (!isObject(value)) return fail(path, "must be a schema object")
    return normalize(value, path, inner, depth + 1, declared)
  }
  if (typeof node.description === "string") out.description = node.description

  if (node.$ref !== undefined) {
    const ref = node.$ref
    const prefix = "#/$defs/"
    if (typeof ref !== "string" || !ref.startsWith(prefix)) fail(join(at, "$ref"), "only local references of the form #/$defs/NAME are supported")
    const name = (ref as string).slice(prefix.length)
    if (!inner.some((scope) => Object.hasOwn(scope, name))) fail(join(at, "$ref"), `no definition named "${name}" in $defs`)
    return { ...out, $ref: ref }
  }
  const alternatives = node.oneOf ?? node.anyOf
  if (alternatives !== undefined) {
    const keyword = node.oneOf !== undefined ? "oneOf" : "anyOf"
    if (!Array.isArray(alternatives) || alternatives.length === 0) fail(join(at, keyword), `\`${keyword}\` must be a non-empty array of schemas`)
    return { ...out, oneOf: (alternatives as ReadonlyArray<Json>).map((alternative, index) => sub(alternative, join(at, `${keyword}[${index}]`))) }
  }
  if (node.const !== undefined) {
    if (typeof node.const === "object" && node.const !== null) fail(join(at, "const"), "`const` must be a string, number, boolean or null")
    if (hasNul(node.const)) fail(join(at, "const"), nulMessage("`const` values"))
    return { ...out, const: node.const }
  }
  if (node.enum !== undefined) {
    if (!Array.isArray(node.enum) || node.enum.length === 0) fail(join(at, "enum"), "`enum` must be a non-empty array")
    for (const value of node.enum as ReadonlyArray<Json>) {
      if (typeof value === "object" && value !== null) fail(join(at, "enum"), "`enum` values must be strings, numbers, booleans or null")
      if (hasNul(value)) fail(join(at, "enum"), nulMessage("`enum` values"))
    }
    return { ...out, enum: node.enum }
  }

  const type = node.type
  if (type === undefined) fail(at, "every schema needs `type`, `enum`, `const`, `anyOf`, `oneOf` or `$ref`")
  const types = Array.isArray(type) ? (type as ReadonlyArray<Json>) : [type as Json]
  if (types.length === 0) fail(join(at, "type"), "`type` must not be empty")
  for (const each of types) {
    if (typeof each !== "string" || !allTypes.has(each)) fail(join(at, "type"), `unknown type ${JSON.stringify(each)}`)
  }
  if (types.length > 1) {
    if (types.every((each) => scalarTypes.has(each as string))) {
      if (types.includes("string")) checkString(node, at)
      return { ...out, type: types }
    }
    // node-llama-cpp takes type lists of scalars only; object/array members become alternatives.
    const { $defs: _defs, description: _description, ...rest } = node
    return { ...out, oneOf: types.map((each) => sub({ ...rest, type: each }, at)) }
  }

  switch (types[0]) {
    case "object": {
      const properties: Record<string, Json> = {}
      if (node.properties !== undefined) {
        if (!isObject(node.properties)) fail(join(at, "properties"), "`properties` must be an object of schemas")
        for (const [name, value] of Object.entries(node.properties as JsonObject)) {
          if (hasNul(name)) fail(join(at, "properties"), nulMessage("property names"))
          properties[name] = sub(value, join(at, `properties.${name}`))
        }
      }
      const result: Record<string, Json> = { ...out, type: "object", properties }
      const additional = node.additionalProperties
      if (additional !== undefined && typeof additional !== "boolean") {
        result.additionalProperties = sub(additional, join(at, "additionalProperties"))
      } else if (additional === true || (additional === undefined && node.properties === undefined)) {
        // JSON Schema's default allows any other keys; node-llama-cpp's default forbids them.
        result.additionalProperties = true
      }
      for (const key of ["minProperties", "maxProperties"] as const) {
        if (node[key] !== undefined) {
          if (!isCount(node[key])) fail(join(at, key), `\`${key}\` must be a non-negative integer`)
          result[key] = node[key]
        }
      }
      checkRepetitions(node, at, "minProperties")
      if (node.required !== undefined && (!Array.isArray(node.required) || node.required.some((name) => typeof name !== "string"))) {
        fail(join(at, "required"), "`required` must be an array of property names")
      }
      return result
    }
    case "array": {
      const result: Record<string, Json> = { ...out, type: "array" }
      if (node.items !== undefined) {
        if (typeof node.items === "boolean") {
          if (!node.items) result.maxItems = 0
        } else result.items = sub(node.items, join(at, "items"))
      }
      if (node.prefixItems !== undefined) {
        if (!Array.isArray(node.prefixItems)) fail(join(at, "prefixItems"), "`prefixItems` must be an array of schemas")
        result.prefixItems = (node.prefixItems as ReadonlyArray<Json>).map((item, index) => sub(item, join(at, `prefixItems[${index}]`)))
      }
      for (const key of ["minItems", "maxItems"] as const) {
        if (node[key] !== undefined) {
          if (!isCount(node[key])) fail(join(at, key), `\`${key}\` must be a non-negative integer`)
          result[key] = node[key]
        }
      }
      checkRepetitions(node, at, "minItems")
      return result
    }
    case "string": {
      checkString(node, at)
      const result: Record<string, Json> = { ...out, type: "string" }
      if (node.format !== undefined) result.format = node.format
      else {
        if (node.minLength !== undefined) result.minLength = node.minLength
        if (node.maxLength !== undefined) result.maxLength = node.maxLength
      }
      return result
    }
    default:
      return { ...out, type: types[0]! }
  }
}

const checkString = (node: JsonObject, at: string) => {
  if (node.format !== undefined && (typeof node.format !== "string" || !stringFormats.has(node.format))) {
    fail(join(at, "format"), `string format ${JSON.stringify(node.format)} is not supported (supported: date-time, time, date)`)
  }
  for (const key of ["minLength", "maxLength"] as const) {
    if (node[key] !== undefined && !isCount(node[key])) fail(join(at, key), `\`${key}\` must be a non-negative integer`)
  }
  checkRepetitions(node, at, "minLength")
  if (node.format !== undefined && (node.minLength !== undefined || node.maxLength !== undefined)) {
    fail(at, "`format` cannot be combined with `minLength` or `maxLength`")
  }
}

/** llama.cpp reads a grammar as a C string: a NUL character would end it early. */
const hasNul = (value: Json) => typeof value === "string" && value.includes("\u0000")

const nulMessage = (what: string) => `${what} must not contain NUL (U+0000) characters: the grammar engine cannot express them`

const checkRepetitions = (node: JsonObject, at: string, key: keyof typeof maxRepetitions) => {
  const value = node[key]
  if (typeof value === "number" && value > maxRepetitions[key]) {
    fail(join(at, key), `\`${key}\` must be at most ${maxRepetitions[key]}: the grammar engine repeats an item at most that many times`)
  }
}

/** Where a schema's `$defs` were declared, for the `$ref` cycle check. */
interface DefsScope {
  readonly defs: JsonObject
  readonly at: string
  readonly scopes: ReadonlyArray<JsonObject>
}

const resolveRef = (ref: Json | undefined, scopes: ReadonlyArray<JsonObject>) => {
  const prefix = "#/$defs/"
  if (typeof ref !== "string" || !ref.startsWith(prefix)) return undefined
  const name = ref.slice(prefix.length)
  for (let index = scopes.length - 1; index >= 0; index--) {
    const def = scopes[index]![name]
    if (Object.hasOwn(scopes[index]!, name) && isObject(def)) return { def, scopes: scopes.slice(0, index + 1) }
  }
  return undefined
}

/**
 * Fails on a `$ref` that can reach its own definition again before anything is written (`a → a`, `a → b → a`, or
 * through `anyOf`/`oneOf` alternatives): llama.cpp rejects such left-recursive grammars. Objects, arrays and scalars
 * always write a character first, so only `$ref` and alternatives are followed.
 */
const checkRefCycles = (declared: ReadonlyArray<DefsScope>) => {
  const state = new Map<JsonObject, "visiting" | "done">()
  const paths = new Map<JsonObject, string>()
  for (const { defs, at } of declared) {
    for (const [name, def] of Object.entries(defs)) if (isObject(def)) paths.set(def, join(at, `$defs.${name}`))
  }
  const visit = (def: JsonObject, scopes: ReadonlyArray<JsonObject>) => {
    if (state.get(def) === "done") return
    state.set(def, "visiting")
    leftRefs(def, scopes, paths.get(def) ?? "")
    state.set(def, "done")
  }
  const leftRefs = (node: JsonObject, scopes: ReadonlyArray<JsonObject>, at: string) => {
    const inner = isObject(node.$defs) ? [...scopes, node.$defs] : scopes
    if (node.$ref !== undefined) {
      const target = resolveRef(node.$ref, inner)
      if (target === undefined) return
      if (state.get(target.def) === "visiting") {
        fail(join(at, "$ref"), "this `$ref` leads back to itself before anything is generated (left recursion), which the grammar engine cannot build")
      }
      visit(target.def, target.scopes)
      return
    }
    const keyword = node.oneOf !== undefined ? "oneOf" : "anyOf"
    const alternatives = node[keyword]
    if (!Array.isArray(alternatives)) return
    alternatives.forEach((alternative, index) => {
      if (isObject(alternative)) leftRefs(alternative, inner, join(at, `${keyword}[${index}]`))
    })
  }
  for (const { defs, scopes } of declared) {
    for (const def of Object.values(defs)) if (isObject(def)) visit(def, [...scopes, defs])
  }
}
