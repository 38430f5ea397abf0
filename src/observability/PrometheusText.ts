import { MetricState } from "effect"
import type { MetricLabel, MetricPair } from "effect"
import type { MetricFamily } from "./WeftMetrics.js"

/** Escapes a label value for the text exposition format: backslash, double quote and line feed. */
export const escapeLabelValue = (value: string): string =>
  value.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")

const escapeHelp = (text: string): string => text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")

const formatNumber = (value: number | bigint): string => {
  if (typeof value === "bigint") return value.toString()
  if (Number.isNaN(value)) return "NaN"
  if (value === Infinity) return "+Inf"
  if (value === -Infinity) return "-Inf"
  return String(value)
}

const labelSet = (labels: ReadonlyArray<readonly [string, string]>): string =>
  labels.length === 0 ? "" : `{${labels.map(([key, value]) => `${key}="${escapeLabelValue(value)}"`).join(",")}}`

const labelsOf = (tags: ReadonlyArray<MetricLabel.MetricLabel>): Array<readonly [string, string]> =>
  tags.map((tag) => [tag.key, tag.value] as const).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))

const samplesOf = (name: string, pair: MetricPair.MetricPair.Untyped): Array<string> => {
  const labels = labelsOf(pair.metricKey.tags)
  const state: unknown = pair.metricState
  if (MetricState.isCounterState(state)) return [`${name}${labelSet(labels)} ${formatNumber(state.count)}`]
  if (MetricState.isGaugeState(state)) return [`${name}${labelSet(labels)} ${formatNumber(state.value)}`]
  if (MetricState.isHistogramState(state)) {
    // Effect's buckets are cumulative already and end with the +Inf boundary.
    const lines = state.buckets.map(([boundary, count]) =>
      `${name}_bucket${labelSet([...labels, ["le", formatNumber(boundary)]])} ${formatNumber(count)}`
    )
    if (state.buckets.at(-1)?.[0] !== Infinity) {
      lines.push(`${name}_bucket${labelSet([...labels, ["le", "+Inf"]])} ${formatNumber(state.count)}`)
    }
    lines.push(`${name}_sum${labelSet(labels)} ${formatNumber(state.sum)}`, `${name}_count${labelSet(labels)} ${formatNumber(state.count)}`)
    return lines
  }
  return []
}

/**
 * Renders `pairs` (from `Metric.snapshot`) in the Prometheus text exposition format (version 0.0.4): every family in
 * `families` gets its HELP and TYPE lines, even before it has a sample; metrics outside `families` are left out.
 */
export const encodePrometheusText = (
  families: ReadonlyArray<MetricFamily>,
  pairs: Iterable<MetricPair.MetricPair.Untyped>
): string => {
  const byName = new Map<string, Array<MetricPair.MetricPair.Untyped>>()
  for (const pair of pairs) {
    const list = byName.get(pair.metricKey.name)
    if (list === undefined) byName.set(pair.metricKey.name, [pair])
    else list.push(pair)
  }
  const lines: Array<string> = []
  for (const family of families) {
    lines.push(`# HELP ${family.name} ${escapeHelp(family.help)}`, `# TYPE ${family.name} ${family.type}`)
    const series = (byName.get(family.name) ?? [])
      .map((pair) => ({ key: labelSet(labelsOf(pair.metricKey.tags)), pair }))
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    for (const { pair } of series) lines.push(...samplesOf(family.name, pair))
  }
  return lines.join("\n") + "\n"
}

/** The content type of the text exposition format. */
export const prometheusContentType = "text/plain; version=0.0.4; charset=utf-8"
