import type { BenchRun } from "./BenchSettings.js"
import { percentiles } from "./LevelResult.js"
import type { LevelResult, Percentiles } from "./LevelResult.js"
import type { PrefillProbeResult } from "./PrefillProbe.js"
import { chatReuseTable } from "./ChatReuse.js"
import type { CeilingResult } from "./DecodeCeiling.js"

const ms = (value: number) => (Number.isNaN(value) ? "–" : value >= 100 ? value.toFixed(0) : value.toFixed(1))

const median = (values: ReadonlyArray<number>): number => {
  const sorted = values.filter((value) => !Number.isNaN(value)).sort((a, b) => a - b)
  if (sorted.length === 0) return Number.NaN
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

const medianPercentiles = (all: ReadonlyArray<Percentiles>): Percentiles => ({
  p50: median(all.map((value) => value.p50)),
  p95: median(all.map((value) => value.p95)),
  p99: median(all.map((value) => value.p99)),
  max: median(all.map((value) => value.max))
})

/**
 * Percentiles over every round's requests together where each round kept them, else the median of the rounds' own.
 * A round's p99 over a few dozen requests is its slowest one or two, and their median is no steadier.
 */
const pooledPercentiles = (rows: ReadonlyArray<LevelResult>, latency: "ttftMs" | "e2eMs"): Percentiles =>
  rows.every((row) => row.latencySamples !== undefined)
    ? percentiles(rows.flatMap((row) => row.latencySamples![latency]))
    : medianPercentiles(rows.map((row) => row[latency]))

/** One mode at one level over all its rounds: medians of each figure, TTFT and E2E percentiles over all requests. */
export interface LevelSummary {
  readonly mode: string
  readonly concurrency: number
  readonly rounds: number
  readonly tokensPerSecond: number
  /** Median over rounds of this round's tok/s ÷ the naive mode's in the same round. */
  readonly vsNaive: number | undefined
  readonly ttftMs: Percentiles
  readonly itlMs: Percentiles
  readonly e2eMs: Percentiles
  readonly errors: number
  readonly backgroundLoad: number | undefined
}

/** Medians per mode and level, with each mode's ratio to naive taken round by round (side by side). */
export const summarizeRun = (results: ReadonlyArray<LevelResult>): Array<LevelSummary> => {
  const keys: Array<{ readonly mode: string; readonly concurrency: number }> = []
  for (const result of results) {
    if (!keys.some((key) => key.mode === result.mode && key.concurrency === result.concurrency)) {
      keys.push({ mode: result.mode, concurrency: result.concurrency })
    }
  }
  const modeOrder = [...new Set(keys.map((key) => key.mode))]
  keys.sort((a, b) => modeOrder.indexOf(a.mode) - modeOrder.indexOf(b.mode) || a.concurrency - b.concurrency)
  return keys.map(({ concurrency, mode }) => {
    const rows = results.filter((result) => result.mode === mode && result.concurrency === concurrency)
    const ratios = rows.flatMap((row) => {
      const naive = results.find((result) =>
        result.mode === "naive" && result.concurrency === concurrency && result.round === row.round
      )
      return naive === undefined || naive.tokensPerSecond === 0 ? [] : [row.tokensPerSecond / naive.tokensPerSecond]
    })
    const loads = rows.flatMap((row) => (row.backgroundLoad === undefined ? [] : [row.backgroundLoad]))
    return {
      mode,
      concurrency,
      rounds: rows.length,
      tokensPerSecond: median(rows.map((row) => row.tokensPerSecond)),
      vsNaive: ratios.length === 0 ? undefined : median(ratios),
      ttftMs: pooledPercentiles(rows, "ttftMs"),
      itlMs: medianPercentiles(rows.map((row) => row.itlMs)),
      e2eMs: pooledPercentiles(rows, "e2eMs"),
      errors: rows.reduce((sum, row) => sum + row.errors, 0),
      backgroundLoad: loads.length === 0 ? undefined : median(loads)
    }
  })
}

/** The measured levels, each with its ratio to the naive mode at the same concurrency. */
export const levelTable = (summaries: ReadonlyArray<LevelSummary>): string => {
  const lines = [
    "| mode | streams | tok/s | × naive | TTFT p50 / p95 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms | errors | other load |",
    "|---|---:|---:|---:|---|---|---|---:|---:|"
  ]
  for (const level of summaries) {
    lines.push(
      `| ${level.mode} | ${level.concurrency} | ${level.tokensPerSecond.toFixed(1)} | ` +
        `${level.vsNaive === undefined ? "–" : `${level.vsNaive.toFixed(2)}×`} | ` +
        `${ms(level.ttftMs.p50)} / ${ms(level.ttftMs.p95)} / ${ms(level.ttftMs.p99)} | ${ms(level.itlMs.p50)} / ${ms(level.itlMs.p99)} | ` +
        `${ms(level.e2eMs.p50)} / ${ms(level.e2eMs.p99)} | ${level.errors} | ` +
        `${level.backgroundLoad === undefined ? "–" : `${(level.backgroundLoad * 100).toFixed(0)}%`} |`
    )
  }
  return lines.join("\n")
}

/** The issue's targets: throughput ratios over HTTP, TTFT under load, HTTP overhead. */
export const targetTable = (summaries: ReadonlyArray<LevelSummary>, httpMode = "weft-http"): string | undefined => {
  const find = (mode: string, concurrency: number) =>
    summaries.find((summary) => summary.mode === mode && summary.concurrency === concurrency)
  const checks: Array<{ readonly target: string; readonly measured: string; readonly met: boolean }> = []
  const ratioCheck = (concurrency: number, minimum: number) => {
    const weft = find(httpMode, concurrency)
    const naive = find("naive", concurrency)
    if (weft?.vsNaive === undefined || naive === undefined) return
    checks.push({
      target: `${concurrency} stream${concurrency === 1 ? "" : "s"}: ≥ ${minimum}× naive`,
      measured: `${weft.vsNaive.toFixed(2)}× (${weft.tokensPerSecond.toFixed(1)} vs ${naive.tokensPerSecond.toFixed(1)} tok/s)`,
      met: weft.vsNaive >= minimum
    })
  }
  ratioCheck(1, 1.4)
  ratioCheck(8, 3.5)
  ratioCheck(16, 3.5)
  const single = find(httpMode, 1)
  const sixteen = find(httpMode, 16)
  if (single !== undefined && sixteen !== undefined) {
    const ratio = sixteen.ttftMs.p99 / single.ttftMs.p50
    checks.push({
      target: "TTFT p99 at 16 streams ≤ 2× single-stream TTFT (p50)",
      measured: `${ratio.toFixed(2)}× (${ms(sixteen.ttftMs.p99)} vs ${ms(single.ttftMs.p50)} ms)`,
      met: ratio <= 2
    })
  }
  for (const level of summaries.filter((summary) => summary.mode === httpMode)) {
    const inProcess = find("in-process", level.concurrency)
    if (inProcess === undefined || inProcess.tokensPerSecond === 0) continue
    const overhead = 1 - level.tokensPerSecond / inProcess.tokensPerSecond
    checks.push({
      target: `HTTP overhead at ${level.concurrency} stream${level.concurrency === 1 ? "" : "s"} ≤ 3% of in-process`,
      measured: `${(overhead * 100).toFixed(1)}% (${level.tokensPerSecond.toFixed(1)} vs ${inProcess.tokensPerSecond.toFixed(1)} tok/s)`,
      met: overhead <= 0.03
    })
  }
  if (checks.length === 0) return undefined
  return [
    "| target | measured | met |",
    "|---|---|---|",
    ...checks.map((check) => `| ${check.target} | ${check.measured} | ${check.met ? "yes" : "**no**"} |`)
  ].join("\n")
}

/**
 * `llama_decode` alone per level (median over rounds), and each mode's tok/s as a share of it: how much of what this
 * binary can decode a mode turns into streamed tokens.
 */
export const ceilingTable = (
  ceiling: ReadonlyArray<CeilingResult>,
  summaries: ReadonlyArray<LevelSummary>
): string | undefined => {
  if (ceiling.length === 0) return undefined
  const levels = [...new Set(ceiling.map((result) => result.concurrency))].sort((a, b) => a - b)
  const modes = [...new Set(summaries.map((summary) => summary.mode))]
  return [
    `| streams | llama_decode alone tok/s | ms per step | ${modes.map((mode) => `${mode} % of it`).join(" | ")} |`,
    `|---:|---:|---:|${modes.map(() => "---:").join("|")}|`,
    ...levels.map((concurrency) => {
      const rows = ceiling.filter((result) => result.concurrency === concurrency)
      const tokensPerSecond = median(rows.map((row) => row.tokensPerSecond))
      const shares = modes.map((mode) => {
        const summary = summaries.find((entry) => entry.mode === mode && entry.concurrency === concurrency)
        return summary === undefined ? "–" : `${((summary.tokensPerSecond / tokensPerSecond) * 100).toFixed(0)}%`
      })
      return `| ${concurrency} | ${tokensPerSecond.toFixed(1)} | ${ms(median(rows.map((row) => row.msPerStep)))} | ${shares.join(" | ")} |`
    })
  ].join("\n")
}

/** The long-prompt-under-load probe. */
export const prefillTable = (probes: ReadonlyArray<PrefillProbeResult>): string | undefined => {
  if (probes.length === 0) return undefined
  return [
    "| mode | running streams | long prompt tokens | steady ITL p50 / p99 ms | longest gap during prefill ms | long-prompt TTFT ms | errors |",
    "|---|---:|---:|---|---:|---:|---:|",
    ...probes.map((probe) =>
      `| ${probe.mode} | ${probe.streams} | ${probe.longPromptTokens ?? "?"} | ${ms(probe.steadyItlMs.p50)} / ${ms(probe.steadyItlMs.p99)} | ` +
      `${ms(probe.maxGapDuringPrefillMs)} | ${ms(probe.longTtftMs)} | ${probe.errors} |`
    )
  ].join("\n")
}

/** The whole run as markdown: settings, the levels over all rounds, the targets and the prefill probe. */
export const renderReport = (run: BenchRun): string => {
  const settings = run.settings
  const summaries = summarizeRun(run.results)
  const targets = targetTable(summaries)
  const prefill = prefillTable(run.prefill)
  const ceiling = ceilingTable(run.ceiling, summaries)
  return [
    `# weft bench — ${run.startedAt}`,
    "",
    `\`${run.command}\``,
    "",
    `${run.machine.cpus} cores (${run.machine.cpuModel}), ${run.machine.memoryGiB} GiB, Node ${run.machine.node}, ${run.machine.platform}. ` +
    `Model ${settings.modelPath ?? settings.url ?? "?"}; prompt ${settings.promptTokens} tokens, ${settings.completionTokens}` +
    `${settings.completionSpread === 0 ? "" : ` ± ${settings.completionSpread}`} completion ` +
    `tokens, ignore_eos, streaming, temperature ${settings.temperature}; ${settings.seconds} s closed-loop window per level, ` +
    `${settings.rounds} round${settings.rounds === 1 ? "" : "s"} (tok/s and ITL: medians of the rounds; TTFT and E2E: percentiles over all rounds' requests); threads ${settings.threads}, ` +
    `context ${settings.contextSize} per sequence${settings.batchSize === undefined ? "" : `, batch ${settings.batchSize}`}, flash attention ${settings.flashAttention ? "on" : "off"} (Weft modes). ` +
    "“other load”: CPU share used by other processes meanwhile" +
      (settings.busy > 0 ? ` (including the ${settings.busy} busy process${settings.busy === 1 ? "" : "es"} of \`--busy\`).` : "."),
    ...(settings.variants.length === 0 ? [] : [
      "",
      ...settings.variants.map((variant) =>
        `- \`${variant.name}\`: \`weft serve\` ${[...Object.entries(variant.env).map(([key, value]) => `${key}=${value}`), ...variant.args].join(" ")}`
      )
    ]),
    "",
    "## Results",
    ...(summaries.length === 0 ? [] : ["", levelTable(summaries)]),
    ...(ceiling === undefined ? [] : [
      "",
      "### Engine ceiling",
      "",
      "`llama_decode` alone through node-llama-cpp on the same binary, model, threads and context shape, in a process with one libuv thread: one token per sequence per step, logits computed, no sampling and no JS between steps. Every streamed token also costs its prompt's share of prefill and a sampling pass, so Weft stays below 100%; llama.cpp's own server, with a persistent ggml threadpool, can pass it at narrow steps.",
      "",
      ceiling
    ]),
    ...(targets === undefined ? [] : ["", "### Targets", "", targets]),
    ...(prefill === undefined ? [] : ["", "### Long prompt under load", "", prefill]),
    ...(run.chatReuse === undefined ? [] : [
      "",
      "### Prefix reuse across a chat",
      "",
      `One ${run.chatReuse.turns}-turn conversation in-process (4 sequences of 4096 tokens), ${run.chatReuse.completionTokens} completion tokens per turn, with the prefix cache on, then off: prompt tokens evaluated and time to first token per turn.`,
      "",
      chatReuseTable(run.chatReuse)
    ]),
    ""
  ].join("\n")
}
