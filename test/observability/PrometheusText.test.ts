import { describe, expect, it } from "@effect/vitest"
import { Effect, Metric, MetricBoundaries } from "effect"
import { encodePrometheusText, escapeLabelValue } from "../../src/observability/PrometheusText.js"
import { weftMetricFamilies } from "../../src/observability/WeftMetrics.js"
import type { MetricFamily } from "../../src/observability/WeftMetrics.js"
import { parsePrometheusText, sampleValue } from "../support/prometheusText.js"

// Test-only families with names of their own: Effect's metric registry is global to the test process.
const families: ReadonlyArray<MetricFamily> = [
  { name: "weft_test_escape_total", type: "counter", help: "Help with a backslash \\ and a\nline feed" },
  { name: "weft_test_level", type: "gauge", help: "A gauge" },
  { name: "weft_test_latency_seconds", type: "histogram", help: "A histogram" },
  { name: "weft_test_unused_total", type: "counter", help: "Declared, never updated" }
]

describe("Prometheus text encoding", () => {
  it("escapes backslash, double quote and line feed in label values", () => {
    expect(escapeLabelValue("a\"b\\c\nd")).toBe("a\\\"b\\\\c\\nd")
  })

  it.effect("round-trips awkward label values through a strict parser, with HELP and TYPE for every family", () =>
    Effect.gen(function*() {
      const awkward = "model \"q\\4\"\nnext line, {braces}=x"
      yield* Metric.incrementBy(Metric.tagged(Metric.counter("weft_test_escape_total"), "model", awkward), 3)
      yield* Metric.set(Metric.tagged(Metric.gauge("weft_test_level"), "model", "plain"), 0.25)
      const histogram = Metric.tagged(
        Metric.histogram("weft_test_latency_seconds", MetricBoundaries.fromIterable([0.1, 1])),
        "model",
        awkward
      )
      yield* Metric.update(histogram, 0.05)
      yield* Metric.update(histogram, 0.5)
      yield* Metric.update(histogram, 7)

      const text = encodePrometheusText(families, yield* Metric.snapshot)
      expect(text).toContain(`model="model \\"q\\\\4\\"\\nnext line, {braces}=x"`)
      expect(text).toContain("# HELP weft_test_escape_total Help with a backslash \\\\ and a\\nline feed")
      const parsed = parsePrometheusText(text)

      expect([...parsed.keys()]).toEqual(families.map((family) => family.name))
      for (const family of families) {
        expect(parsed.get(family.name)?.type).toBe(family.type)
        expect(parsed.get(family.name)?.help).toBe(family.help)
      }
      expect(sampleValue(parsed, "weft_test_escape_total", { model: awkward })).toBe(3)
      expect(sampleValue(parsed, "weft_test_level", { model: "plain" })).toBe(0.25)
      expect(sampleValue(parsed, "weft_test_latency_seconds_bucket", { model: awkward, le: "0.1" })).toBe(1)
      expect(sampleValue(parsed, "weft_test_latency_seconds_bucket", { model: awkward, le: "1" })).toBe(2)
      expect(sampleValue(parsed, "weft_test_latency_seconds_bucket", { model: awkward, le: "+Inf" })).toBe(3)
      expect(sampleValue(parsed, "weft_test_latency_seconds_count", { model: awkward })).toBe(3)
      expect(sampleValue(parsed, "weft_test_latency_seconds_sum", { model: awkward })).toBeCloseTo(7.55)
      expect(parsed.get("weft_test_unused_total")?.samples).toEqual([])
    }))

  it("rejects what Prometheus would reject", () => {
    expect(() => parsePrometheusText("weft_x{a=\"\\q\"} 1\n")).toThrow(/bad escape/)
    expect(() => parsePrometheusText("# TYPE weft_x counter\nweft_x 1\n# TYPE weft_y gauge\nweft_y 1\nweft_x{a=\"b\"} 2\n")).toThrow(/contiguous/)
    expect(() => parsePrometheusText("# TYPE weft_h histogram\nweft_h_bucket{le=\"1\"} 2\nweft_h_bucket{le=\"+Inf\"} 1\nweft_h_sum 1\nweft_h_count 1\n"))
      .toThrow(/cumulative/)
    expect(() => parsePrometheusText("weft_x 1")).toThrow(/line feed/)
  })

  it("declares every Weft family with a unit-suffixed, weft_-prefixed name; counters end in _total", () => {
    const names = weftMetricFamilies.map((family) => family.name)
    expect(new Set(names).size).toBe(names.length)
    for (const family of weftMetricFamilies) {
      expect(family.name).toMatch(/^weft_[a-z0-9_]+$/)
      if (family.type === "counter") expect(family.name).toMatch(/_total$/)
      else expect(family.name).not.toMatch(/_total$/)
      if (family.type === "histogram") expect(family.name).toMatch(/_seconds$/)
    }
    const text = encodePrometheusText(weftMetricFamilies, [])
    expect([...parsePrometheusText(text).keys()]).toEqual(names)
  })
})
