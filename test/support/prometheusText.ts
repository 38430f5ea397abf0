/**
 * A strict parser of the Prometheus text exposition format (0.0.4), for tests: it throws on anything a Prometheus
 * server would reject (bad names, bad escapes, samples before their TYPE, interleaved families, duplicate series,
 * histograms without `le`, non-cumulative buckets, or a `+Inf` bucket that differs from `_count`).
 */

export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

export interface Family {
  readonly name: string
  help: string | undefined
  type: "counter" | "gauge" | "histogram" | "summary" | "untyped" | undefined
  readonly samples: Array<Sample>
}

const metricName = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const labelName = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const types = new Set(["counter", "gauge", "histogram", "summary", "untyped"])

const parseValue = (text: string, line: number): number => {
  if (text === "+Inf") return Infinity
  if (text === "-Inf") return -Infinity
  if (text === "NaN") return NaN
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text)) throw new Error(`line ${line}: bad value ${JSON.stringify(text)}`)
  return Number(text)
}

const unescapeHelp = (text: string, line: number) =>
  text.replace(/\\(.)/g, (_, char: string) => {
    if (char === "\\") return "\\"
    if (char === "n") return "\n"
    throw new Error(`line ${line}: bad escape \\${char} in HELP`)
  })

/** Reads `{a="x",b="y"}` from `text` at `start` (just after the name); returns the labels and where parsing stopped. */
const parseLabels = (text: string, start: number, line: number): { labels: Record<string, string>; end: number } => {
  const labels: Record<string, string> = {}
  let at = start + 1
  while (true) {
    if (text[at] === "}") return { labels, end: at + 1 }
    const eq = text.indexOf("=", at)
    if (eq === -1) throw new Error(`line ${line}: label without "="`)
    const name = text.slice(at, eq)
    if (!labelName.test(name)) throw new Error(`line ${line}: bad label name ${JSON.stringify(name)}`)
    if (name in labels) throw new Error(`line ${line}: duplicate label ${name}`)
    if (text[eq + 1] !== "\"") throw new Error(`line ${line}: label value must be quoted`)
    let value = ""
    at = eq + 2
    while (true) {
      const char = text[at]
      if (char === undefined) throw new Error(`line ${line}: unterminated label value`)
      if (char === "\n") throw new Error(`line ${line}: raw line feed in label value`)
      if (char === "\"") break
      if (char === "\\") {
        const next = text[at + 1]
        if (next === "\\") value += "\\"
        else if (next === "\"") value += "\""
        else if (next === "n") value += "\n"
        else throw new Error(`line ${line}: bad escape \\${next} in label value`)
        at += 2
        continue
      }
      value += char
      at++
    }
    labels[name] = value
    at++
    if (text[at] === ",") at++
    else if (text[at] !== "}") throw new Error(`line ${line}: expected "," or "}" after a label`)
  }
}

const familyOf = (sampleName: string, families: Map<string, Family>): string => {
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    if (sampleName.endsWith(suffix)) {
      const base = sampleName.slice(0, -suffix.length)
      const family = families.get(base)
      if (family?.type === "histogram" || family?.type === "summary") return base
    }
  }
  return sampleName
}

/** Parses an exposition into its families, in order of appearance. */
export const parsePrometheusText = (text: string): Map<string, Family> => {
  if (!text.endsWith("\n")) throw new Error("exposition must end with a line feed")
  const families = new Map<string, Family>()
  const closed = new Set<string>()
  const seriesSeen = new Set<string>()
  let current: string | undefined
  const enter = (name: string) => {
    if (current !== name) {
      if (closed.has(name)) throw new Error(`family ${name} is not contiguous`)
      if (current !== undefined) closed.add(current)
      current = name
    }
    let family = families.get(name)
    if (family === undefined) {
      family = { name, help: undefined, type: undefined, samples: [] }
      families.set(name, family)
    }
    return family
  }
  const lines = text.slice(0, -1).split("\n")
  lines.forEach((raw, index) => {
    const line = index + 1
    if (raw.trim() === "") return
    if (raw.startsWith("#")) {
      const match = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(raw)
      if (match === null) return
      const [, kind, name, rest] = match as unknown as [string, "HELP" | "TYPE", string, string]
      if (!metricName.test(name)) throw new Error(`line ${line}: bad metric name ${name}`)
      const family = enter(name)
      if (kind === "HELP") {
        if (family.help !== undefined) throw new Error(`line ${line}: second HELP for ${name}`)
        family.help = unescapeHelp(rest, line)
      } else {
        if (family.type !== undefined) throw new Error(`line ${line}: second TYPE for ${name}`)
        if (family.samples.length > 0) throw new Error(`line ${line}: TYPE after samples of ${name}`)
        if (!types.has(rest)) throw new Error(`line ${line}: bad type ${rest}`)
        family.type = rest as Family["type"]
      }
      return
    }
    const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(raw)
    if (nameMatch === null) throw new Error(`line ${line}: bad sample ${JSON.stringify(raw)}`)
    const name = nameMatch[0]
    let labels: Record<string, string> = {}
    let at = name.length
    if (raw[at] === "{") ({ labels, end: at } = parseLabels(raw, at, line))
    if (raw[at] !== " ") throw new Error(`line ${line}: expected a space before the value`)
    const parts = raw.slice(at + 1).split(" ")
    if (parts.length < 1 || parts.length > 2 || parts[0] === "") throw new Error(`line ${line}: bad value part`)
    const value = parseValue(parts[0]!, line)
    if (parts.length === 2 && !/^-?\d+$/.test(parts[1]!)) throw new Error(`line ${line}: bad timestamp`)
    const family = enter(familyOf(name, families))
    const series = `${name}${JSON.stringify(Object.entries(labels).sort())}`
    if (seriesSeen.has(series)) throw new Error(`line ${line}: duplicate series ${series}`)
    seriesSeen.add(series)
    if (family.type === "histogram") {
      if (name === `${family.name}_bucket` && labels.le === undefined) throw new Error(`line ${line}: bucket without le`)
      if (name === family.name) throw new Error(`line ${line}: histogram sample without a suffix`)
    } else if (labels.le !== undefined && family.type !== undefined) {
      throw new Error(`line ${line}: le label outside a histogram`)
    }
    family.samples.push({ name, labels, value })
  })
  for (const family of families.values()) if (family.type === "histogram") checkHistogram(family)
  return families
}

const withoutLe = (labels: Readonly<Record<string, string>>) =>
  JSON.stringify(Object.entries(labels).filter(([key]) => key !== "le").sort())

const checkHistogram = (family: Family) => {
  const bySeries = new Map<string, Array<Sample>>()
  for (const sample of family.samples) {
    const key = withoutLe(sample.labels)
    bySeries.set(key, [...(bySeries.get(key) ?? []), sample])
  }
  for (const [key, samples] of bySeries) {
    const buckets = samples.filter((sample) => sample.name === `${family.name}_bucket`)
    const count = samples.find((sample) => sample.name === `${family.name}_count`)
    const sum = samples.find((sample) => sample.name === `${family.name}_sum`)
    if (count === undefined || sum === undefined) throw new Error(`${family.name}${key}: missing _count or _sum`)
    const bounds = buckets.map((bucket) => parseValue(bucket.labels.le!, 0))
    for (let i = 1; i < buckets.length; i++) {
      if (!(bounds[i]! > bounds[i - 1]!)) throw new Error(`${family.name}${key}: buckets not in increasing le order`)
      if (buckets[i]!.value < buckets[i - 1]!.value) throw new Error(`${family.name}${key}: buckets not cumulative`)
    }
    if (bounds.at(-1) !== Infinity) throw new Error(`${family.name}${key}: no +Inf bucket`)
    if (buckets.at(-1)!.value !== count.value) throw new Error(`${family.name}${key}: +Inf bucket differs from _count`)
  }
}

/** The value of one sample, or `undefined` when that series is absent. */
export const sampleValue = (
  families: Map<string, Family>,
  name: string,
  labels: Readonly<Record<string, string>> = {}
): number | undefined => {
  const family = families.get(familyOf(name, families))
  const wanted = JSON.stringify(Object.entries(labels).sort())
  return family?.samples.find((sample) => sample.name === name && JSON.stringify(Object.entries(sample.labels).sort()) === wanted)?.value
}
