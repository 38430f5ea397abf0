import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { Console, Effect, Schema } from "effect"
import type { Scope } from "effect"
import { ensureModel } from "../model/generateModel.js"
import { backgroundLoad, cpuSnapshot } from "./CpuLoad.js"
import type { BenchTarget } from "./BenchTarget.js"
import { benchPromptText } from "./BenchPrompt.js"
import { renderReport } from "./BenchReport.js"
import { httpTarget } from "./HttpTarget.js"
import { inProcessTarget } from "./InProcessTarget.js"
import type { EngineBenchConfig } from "./InProcessTarget.js"
import { summarize } from "./LevelResult.js"
import type { LevelResult, RequestSample } from "./LevelResult.js"
import { naiveTarget } from "./NaiveTarget.js"
import { runPrefillProbe } from "./PrefillProbe.js"
import { makeDecodeCeiling } from "./DecodeCeiling.js"
import type { CeilingResult } from "./DecodeCeiling.js"
import type { PrefillProbeResult } from "./PrefillProbe.js"
import { spawnWeft } from "./SpawnedServer.js"

/** `--model` names a file that cannot be read. */
export class BenchModelMissing extends Schema.TaggedError<BenchModelMissing>()("BenchModelMissing", {
  path: Schema.String
}) {
  override get message() {
    return `model file not found or not readable: ${this.path}`
  }
}

/** A way of serving the same workload that the bench measures. */
export type BenchMode = "naive" | "in-process" | "spawn" | "url"

/** Everything one `weft bench` run does. */
export interface BenchSettings {
  readonly modes: ReadonlyArray<BenchMode>
  /** Also measures `llama_decode` alone at each level and round (see `makeDecodeCeiling`). */
  readonly ceiling: boolean
  /** Base URL of any OpenAI-compatible server, for the `url` mode. */
  readonly url: string | undefined
  /** Model name sent to the `url` server; its first listed model when absent. */
  readonly urlModel: string | undefined
  readonly apiKey: string | undefined
  /** How the `url` server is named in the tables; its URL when absent. */
  readonly urlName: string | undefined
  /** Process id of the server behind `url`, so its CPU is not counted as background load. */
  readonly urlPid: number | undefined
  /** GGUF for the naive, in-process and spawn modes; the generated `bench` model when absent. */
  readonly modelPath: string | undefined
  readonly dataDir: string
  /** Closed-loop concurrency levels. */
  readonly levels: ReadonlyArray<number>
  /** Prompt length in tokens, BOS included (on the synthetic models every prompt word is one token). */
  readonly promptTokens: number
  readonly completionTokens: number
  /** Length of each level's measurement window. */
  readonly seconds: number
  readonly temperature: number
  readonly threads: number
  /** Sequences of the in-process and spawned engines; the largest level when absent. */
  readonly parallel: number | undefined
  readonly contextSize: number
  readonly batchSize: number | undefined
  /** Flash attention in the Weft modes (the naive mode keeps node-llama-cpp's default). */
  readonly flashAttention: boolean
  readonly gpu: "auto" | false
  /** Runs the long-prompt-under-load probe: `streams` running, one prompt of `promptTokens`. */
  readonly prefill: { readonly streams: number; readonly promptTokens: number } | undefined
  /** Each level is measured this many times per mode, modes interleaved; the report takes medians. */
  readonly rounds: number
  /** Before each measurement, wait until other processes use less than this % of the CPU (0: never wait). */
  readonly quietBelow: number
  readonly quietMaxWaitSeconds: number
  readonly outDir: string
}

export const defaultBenchSettings: BenchSettings = {
  modes: ["naive", "in-process", "spawn"],
  ceiling: true,
  url: undefined,
  urlModel: undefined,
  apiKey: undefined,
  urlPid: undefined,
  urlName: undefined,
  modelPath: undefined,
  dataDir: ".weft",
  levels: [1, 4, 8, 16],
  promptTokens: 16,
  completionTokens: 64,
  seconds: 6,
  temperature: 0.8,
  threads: os.availableParallelism(),
  parallel: undefined,
  contextSize: 2560,
  batchSize: undefined,
  flashAttention: true,
  gpu: "auto",
  prefill: { streams: 8, promptTokens: 2000 },
  rounds: 1,
  quietBelow: 0,
  quietMaxWaitSeconds: 60,
  outDir: "bench-results"
}

/** A bench run, as written to JSON. */
export interface BenchRun {
  readonly startedAt: string
  readonly command: string
  readonly machine: {
    readonly cpus: number
    readonly cpuModel: string
    readonly memoryGiB: number
    readonly node: string
    readonly platform: string
  }
  readonly settings: BenchSettings & { readonly modelPath: string | undefined }
  /** Every measured level of every mode and round, in the order measured. */
  readonly results: ReadonlyArray<LevelResult>
  readonly ceiling: ReadonlyArray<CeilingResult>
  readonly prefill: ReadonlyArray<PrefillProbeResult>
}

const modeLabel: Record<BenchMode, string> = {
  naive: "naive",
  "in-process": "in-process",
  spawn: "weft-http",
  url: "url"
}

/**
 * Runs one level closed-loop: `concurrency` streams, each sending its next request as soon as the previous one ends.
 * A warm-up round (every stream at once) sizes one request's duration D; the streams then start staggered by
 * D / concurrency, as independent clients would arrive, rather than in lockstep; the window opens once all of them
 * run and lasts `seconds`.
 */
const runLevel = (target: BenchTarget, settings: BenchSettings, concurrency: number, indexBase: number) =>
  Effect.gen(function*() {
    yield* target.prepare(concurrency)
    const words = Math.max(1, settings.promptTokens - 1)
    const call = (index: number, maxTokens: number) => ({
      index,
      prompt: benchPromptText(index, words),
      maxTokens,
      seed: index,
      temperature: settings.temperature
    })
    const streams = Array.from({ length: concurrency }, (_, stream) => stream)
    // Warm-up: every stream at once, short; a request's duration is estimated from its TTFT and inter-token gaps.
    const warmTokens = Math.min(settings.completionTokens, 16)
    const warmUp = yield* Effect.forEach(
      streams,
      (stream) => target.send(call(indexBase + 9_000 + stream, warmTokens)),
      { concurrency: "unbounded" }
    )
    const warm = summarize(target.name, concurrency, warmUp, { start: -Infinity, end: Infinity })
    const estimate = warm.ttftMs.p50 + (settings.completionTokens - 1) * warm.itlMs.p50
    const duration = Number.isFinite(estimate) && estimate > 0 ? estimate : 1000
    const startedAt = performance.now()
    const window = { start: startedAt + duration, end: startedAt + duration + settings.seconds * 1000 }
    const samples: Array<RequestSample> = []
    let next = indexBase
    const cpuBefore = cpuSnapshot(target.pids)
    yield* Effect.forEach(
      streams,
      (stream) =>
        Effect.gen(function*() {
          yield* Effect.sleep(Math.round((stream * duration) / concurrency))
          while (performance.now() < window.end) {
            samples.push(yield* target.send(call(next++, settings.completionTokens)))
          }
        }),
      { concurrency: "unbounded", discard: true }
    )
    const load = backgroundLoad(cpuBefore, cpuSnapshot(target.pids))
    return { ...summarize(target.name, concurrency, samples, window), backgroundLoad: load }
  })

const formatLine = (result: LevelResult) =>
  `  ${result.mode.padEnd(11)} ${String(result.concurrency).padStart(3)} streams  ${result.tokensPerSecond.toFixed(1).padStart(7)} tok/s` +
  `  TTFT p50 ${result.ttftMs.p50.toFixed(0)} ms p99 ${result.ttftMs.p99.toFixed(0)} ms  ITL p50 ${result.itlMs.p50.toFixed(1)} ms` +
  (result.backgroundLoad === undefined ? "" : `  other load ${(result.backgroundLoad * 100).toFixed(0)}%`) +
  (result.errors > 0 ? `  ${result.errors} errors (${result.firstError})` : "")

/** Acquires the target of `mode` in the given scope. */
const targetOf = (
  mode: BenchMode,
  settings: BenchSettings,
  engine: EngineBenchConfig
): Effect.Effect<BenchTarget, unknown, Scope.Scope> => {
  const sockets = Math.max(...settings.levels, (settings.prefill?.streams ?? 0) + 1)
  switch (mode) {
    case "naive":
      return naiveTarget({ modelPath: engine.modelPath, threads: engine.threads, gpu: engine.gpu })
    case "in-process":
      return inProcessTarget(engine)
    case "spawn":
      return Effect.flatMap(spawnWeft(engine), (server) =>
        httpTarget({ name: modeLabel.spawn, baseUrl: server.baseUrl, sockets, pids: server.pid === undefined ? [] : [server.pid] }))
    case "url":
      return settings.url === undefined
        ? Effect.dieMessage("url mode needs --url")
        : httpTarget({
          name: settings.urlName ?? settings.url,
          baseUrl: settings.url,
          model: settings.urlModel,
          apiKey: settings.apiKey,
          sockets,
          pids: settings.urlPid === undefined ? [] : [settings.urlPid]
        })
  }
}

/** Waits (at most `maxSeconds`) until other processes use less than `threshold` of the CPU over one second. */
const waitForQuiet = (threshold: number, maxSeconds: number, pids: ReadonlyArray<number>) =>
  Effect.gen(function*() {
    const deadline = Date.now() + maxSeconds * 1000
    while (Date.now() < deadline) {
      const before = cpuSnapshot(pids)
      yield* Effect.sleep("1 second")
      const load = backgroundLoad(before, cpuSnapshot(pids))
      if (load === undefined || load < threshold) return
    }
  })

/**
 * Runs the bench. Every mode's engine is started once and stays loaded (idle when not measured); each level is then
 * measured mode after mode, round after round (alternating the order), never two at once: they would share the
 * cores. Interleaving keeps the side-by-side ratios fair when the machine's background load drifts.
 */
export const runBench = (settings: BenchSettings, command: string) =>
  Effect.scoped(Effect.gen(function*() {
    const needsModel = settings.ceiling || settings.modes.some((mode) => mode !== "url")
    if (settings.modelPath !== undefined) {
      const modelFile = settings.modelPath
      yield* Effect.tryPromise({
        try: () => fs.access(modelFile),
        catch: () => new BenchModelMissing({ path: modelFile })
      })
    }
    const modelPath = needsModel
      ? settings.modelPath ?? (yield* ensureModel("bench", settings.dataDir))
      : settings.modelPath
    const parallel = settings.parallel ?? Math.max(...settings.levels, (settings.prefill?.streams ?? 0) + 1)
    const engine: EngineBenchConfig = {
      modelPath: modelPath ?? "",
      parallel,
      contextSize: settings.contextSize,
      threads: settings.threads,
      batchSize: settings.batchSize,
      flashAttention: settings.flashAttention,
      gpu: settings.gpu
    }
    const targets: Array<BenchTarget> = []
    for (const mode of settings.modes) {
      yield* Console.log(`starting ${modeLabel[mode]}…`)
      targets.push(yield* targetOf(mode, settings, engine))
    }
    const measureCeiling = settings.ceiling && modelPath !== undefined ? yield* makeDecodeCeiling(engine) : undefined
    const allPids = targets.flatMap((target) => target.pids)
    const quiet = settings.quietBelow > 0
      ? waitForQuiet(settings.quietBelow / 100, settings.quietMaxWaitSeconds, allPids)
      : Effect.void
    const results: Array<LevelResult> = []
    const ceiling: Array<CeilingResult> = []
    let indexBase = 0
    for (const concurrency of settings.levels) {
      for (let round = 0; round < settings.rounds; round++) {
        if (measureCeiling !== undefined) {
          yield* quiet
          const measured = yield* measureCeiling(concurrency, Math.min(settings.seconds, 4), round)
          ceiling.push(measured)
          yield* Console.log(
            `  ceiling     ${String(concurrency).padStart(3)} streams  ${measured.tokensPerSecond.toFixed(1).padStart(7)} tok/s` +
              `  (llama_decode alone, ${measured.msPerStep.toFixed(1)} ms per step)`
          )
        }
        const order = round % 2 === 0 ? targets : [...targets].reverse()
        for (const target of order) {
          yield* quiet
          const result = yield* runLevel(target, settings, concurrency, indexBase)
          indexBase += 100_000
          results.push({ ...result, round })
          yield* Console.log(formatLine(result))
        }
      }
    }
    const prefill: Array<PrefillProbeResult> = []
    if (settings.prefill !== undefined) {
      for (const target of targets) {
        yield* quiet
        const probe = yield* runPrefillProbe(target, {
          streams: settings.prefill.streams,
          longPromptWords: settings.prefill.promptTokens - 1,
          shortPromptWords: Math.max(1, settings.promptTokens - 1),
          warmChunks: 8,
          temperature: settings.temperature
        }, indexBase)
        indexBase += 100_000
        prefill.push(probe)
        yield* Console.log(
          `  prefill probe ${probe.mode}: ${probe.streams} streams, ${probe.longPromptTokens ?? "?"}-token prompt: steady ITL p50 ` +
            `${probe.steadyItlMs.p50.toFixed(1)} ms, longest gap during prefill ${probe.maxGapDuringPrefillMs.toFixed(1)} ms, ` +
            `long-prompt TTFT ${probe.longTtftMs.toFixed(0)} ms`
        )
      }
    }
    const run: BenchRun = {
      startedAt: new Date().toISOString(),
      command,
      machine: {
        cpus: os.availableParallelism(),
        cpuModel: os.cpus()[0]?.model ?? "unknown",
        memoryGiB: Math.round(os.totalmem() / 2 ** 30),
        node: process.version,
        platform: `${os.platform()} ${os.release()}`
      },
      settings: { ...settings, modelPath },
      results,
      ceiling,
      prefill
    }
    const markdown = renderReport(run)
    const stamp = run.startedAt.replace(/[:.]/g, "-")
    const jsonPath = path.join(settings.outDir, `bench-${stamp}.json`)
    const markdownPath = path.join(settings.outDir, `bench-${stamp}.md`)
    yield* Effect.promise(async () => {
      await fs.mkdir(settings.outDir, { recursive: true })
      await fs.writeFile(jsonPath, JSON.stringify(run, null, 2))
      await fs.writeFile(markdownPath, markdown)
    })
    yield* Console.log(`\n${markdown}\nwrote ${jsonPath} and ${markdownPath}`)
    return run
  }))
