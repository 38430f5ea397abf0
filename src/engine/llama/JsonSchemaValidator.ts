/**
 * A JSON Schema validator for the subset `toGrammarSchema` accepts, used to check generated output after the fact.
 * `oneOf` is checked as "at least one alternative", which is what a grammar can enforce (`anyOf` is normalised to it).
 */

type Json = null | boolean | number | string | ReadonlyArray<Json> | { readonly [key: string]: Json }
type JsonObject = { readonly [key: string]: Json }

const isObject = (value: unknown): value is JsonObject => typeof value === "object" && value !== null && !Array.isArray(value)

const typeMatches = (type: string, value: Json): boolean => {
  switch (type) {
    case "null":
      return value === null
    case "boolean":
      return typeof value === "boolean"
    case "string":
      return typeof value === "string"
    case "number":
      return typeof value === "number" && Number.isFinite(value)
    case "integer":
      return typeof value === "number" && Number.isInteger(value)
    case "array":
      return Array.isArray(value)
    case "object":
      return isObject(value)
    default:
      return false
  }
}

const daysIn = (year: number, month: number) => new Date(Date.UTC(year, month, 0)).getUTCDate()

const dateValid = (text: string) => {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text)
  if (match === null) return false
  const [year, month, day] = [Number(match[1]), Number(match[2]), Number(match[3])]
  return month >= 1 && month <= 12 && day >= 1 && day <= daysIn(year, month)
}

const timeValid = (text: string) =>
  /^([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$/i.test(text)

const formatValid = (format: string, text: string) => {
  switch (format) {
    case "date":
      return dateValid(text)
    case "time":
      return timeValid(text)
    case "date-time": {
      const at = text.search(/[Tt]/)
      return at !== -1 && dateValid(text.slice(0, at)) && timeValid(text.slice(at + 1))
    }
    default:
      return true
  }
}

const sameJson = (a: Json | undefined, b: Json) => JSON.stringify(a) === JSON.stringify(b)

const codePoints = (text: string) => [...text].length

const join = (at: string, key: string | number) => (typeof key === "number" ? `${at}[${key}]` : at === "" ? key : `${at}.${key}`)

/** Where `value` breaks `schema` and how (`"a.b: expected integer"`), or undefined when it validates. */
export const schemaViolation = (schema: unknown, value: unknown): string | undefined => {
  if (!isObject(schema)) return undefined
  return check(schema, value as Json, "", [])
}

const check = (schema: JsonObject, value: Json, at: string, scopes: ReadonlyArray<JsonObject>): string | undefined => {
  const inner = isObject(schema.$defs) ? [...scopes, schema.$defs] : scopes
  const fail = (message: string) => `${at === "" ? "(root)" : at}: ${message}`
  if (typeof schema.$ref === "string") {
    const name = schema.$ref.slice("#/$defs/".length)
    const scope = [...inner].reverse().find((defs) => Object.hasOwn(defs, name))
    const target = scope?.[name]
    return isObject(target) ? check(target, value, at, inner) : fail(`unresolved $ref ${schema.$ref}`)
  }
  const alternatives = schema.oneOf ?? schema.anyOf
  if (Array.isArray(alternatives)) {
    const fits = alternatives.some((alternative) => isObject(alternative) && check(alternative, value, at, inner) === undefined)
    return fits ? undefined : fail("matches none of the alternatives")
  }
  if (schema.const !== undefined) return sameJson(value, schema.const) ? undefined : fail(`expected ${JSON.stringify(schema.const)}`)
  if (Array.isArray(schema.enum)) {
    return schema.enum.some((member) => sameJson(value, member)) ? undefined : fail("not one of the enum values")
  }
  if (schema.type === undefined) return undefined
  const types = (Array.isArray(schema.type) ? schema.type : [schema.type]).filter((type): type is string => typeof type === "string")
  const type = types.find((each) => typeMatches(each, value))
  if (type === undefined) return fail(`expected ${types.join(" or ")}, got ${typeof value === "number" ? String(value) : JSON.stringify(value).slice(0, 40)}`)
  if (typeof value === "string") {
    if (typeof schema.minLength === "number" && codePoints(value) < schema.minLength) return fail(`shorter than ${schema.minLength}`)
    if (typeof schema.maxLength === "number" && codePoints(value) > schema.maxLength) return fail(`longer than ${schema.maxLength}`)
    if (typeof schema.format === "string" && !formatValid(schema.format, value)) return fail(`not a valid ${schema.format}`)
    return undefined
  }
  if (Array.isArray(value)) {
    if (typeof schema.minItems === "number" && value.length < schema.minItems) return fail(`fewer than ${schema.minItems} items`)
    if (typeof schema.maxItems === "number" && value.length > schema.maxItems) return fail(`more than ${schema.maxItems} items`)
    const prefix = Array.isArray(schema.prefixItems) ? schema.prefixItems : []
    for (let index = 0; index < value.length; index++) {
      const item = index < prefix.length ? prefix[index] : schema.items
      if (!isObject(item)) continue
      const problem = check(item, value[index]!, join(at, index), inner)
      if (problem !== undefined) return problem
    }
    return undefined
  }
  if (isObject(value)) {
    const keys = Object.keys(value)
    if (typeof schema.minProperties === "number" && keys.length < schema.minProperties) return fail(`fewer than ${schema.minProperties} properties`)
    if (typeof schema.maxProperties === "number" && keys.length > schema.maxProperties) return fail(`more than ${schema.maxProperties} properties`)
    const properties = isObject(schema.properties) ? schema.properties : {}
    if (Array.isArray(schema.required)) {
      const missing = schema.required.find((name) => typeof name === "string" && !Object.hasOwn(value, name))
      if (missing !== undefined) return fail(`missing required property ${JSON.stringify(missing)}`)
    }
    for (const key of keys) {
      const property = Object.hasOwn(properties, key) ? properties[key] : schema.additionalProperties
      if (property === false) return fail(`unexpected property ${JSON.stringify(key)}`)
      if (!isObject(property)) continue
      const problem = check(property, value[key]!, join(at, key), inner)
      if (problem !== undefined) return problem
    }
  }
  return undefined
}
