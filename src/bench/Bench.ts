import { spawn } from "node:child_process"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { Console, Effect } from "effect"
import type { Scope } from "effect"
import { ensureModel } from "../model/generateModel.js"
import { renderReport } from "./BenchReport.js"
import { BenchModelMissing } from "./BenchSettings.js"
import type { BenchMode, BenchRun, BenchSettings } from "./BenchSettings.js"
import type { BenchTarget } from "./BenchTarget.js"
import { runChatReuse } from "./ChatReuse.js"
import { waitForQuiet } from "./CpuLoad.js"
import { makeDecodeCeiling } from "./DecodeCeiling.js"
import type { CeilingResult } from "./DecodeCeiling.js"
import { httpTarget } from "./HttpTarget.js"
import { inProcessTarget } from "./InProcessTarget.js"
import type { EngineBenchConfig } from "./InProcessTarget.js"
import type { LevelResult } from "./LevelResult.js"
import { naiveTarget } from "./NaiveTarget.js"
import { runPrefillProbe } from "./PrefillProbe.js"
import type { PrefillProbeResult } from "./PrefillProbe.js"
import { formatLine, runLevel } from "./RunLevel.js"
import { spawnWeft } from "./SpawnedServer.js"
import type { SpawnVariant } from "./SpawnVariant.js"
import { exited, scopedChild } from "./ScopedChild.js"

const modeLabel: Record<BenchMode, string> = {
  naive: "naive",
  "in-process": "in-process",
  spawn: "weft-http",
  "spawn-native": "weft-http-native",
  url: "url"
}

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
    case "spawn-native":
      // `spawn` is the prebuilt binary even where a native build exists, so the two compare in one run.
      return Effect.flatMap(spawnWeft(engine, ["--binary", mode === "spawn" ? "prebuilt" : "native"]), (server) =>
        httpTarget({ name: modeLabel[mode], baseUrl: server.baseUrl, sockets, pids: server.pid === undefined ? [] : [server.pid] }))
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

/** A `--variant` server: `weft serve` with the variant's flags after the bench's own, in its environment. */
const variantTarget = (variant: SpawnVariant, settings: BenchSettings, engine: EngineBenchConfig) =>
  Effect.flatMap(spawnWeft(engine, variant.args, variant.env), (server) =>
    httpTarget({
      name: variant.name,
      baseUrl: server.baseUrl,
      sockets: Math.max(...settings.levels, (settings.prefill?.streams ?? 0) + 1),
      pids: server.pid === undefined ? [] : [server.pid]
    }))

/** `count` processes spinning on the CPU until the scope closes: the competing load of `--busy`. */
const busyProcesses = (count: number) =>
  Effect.forEach(Array.from({ length: count }, (_, index) => index), () =>
    scopedChild(() => spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: ["ignore", "pipe", "pipe"] }), 1000).pipe(
      Effect.tap(({ child }) =>
        // One that dies early (it should not) is reported, not waited for.
        Effect.sync(() => void exited(child).then(() => child.signalCode === null && console.error(`busy process ${child.pid} exited`)))
      )
    ))

/**
 * Runs the bench. Every mode's engine is started once and stays loaded (idle when not measured); each level is then
 * measured mode after mode, round after round (alternating the order), never two at once: they would share the
 * cores. Interleaving keeps the side-by-side ratios fair when the machine's background load drifts.
 */
export const runBench = (settings: BenchSettings, command: string) =>
  Effect.scoped(Effect.gen(function*() {
    const needsModel = settings.ceiling || settings.chatReuse !== undefined || settings.variants.length > 0 ||
      settings.modes.some((mode) => mode !== "url")
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
    for (const variant of settings.variants) {
      yield* Console.log(`starting ${variant.name}…`)
      targets.push(yield* variantTarget(variant, settings, engine))
    }
    // Started after the servers, so their start-up is not slowed; counted as other load, as any neighbour is.
    if (settings.busy > 0) {
      yield* busyProcesses(settings.busy)
      yield* Console.log(`${settings.busy} competing busy process${settings.busy === 1 ? "" : "es"} running`)
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
    const chatReuse = settings.chatReuse !== undefined && modelPath !== undefined
      ? yield* Effect.zipRight(quiet, runChatReuse({ modelPath, threads: settings.threads, gpu: settings.gpu }, settings.chatReuse))
      : undefined
    if (chatReuse !== undefined) yield* Console.log(`  chat reuse: ${chatReuse.turns} turns, cache on and off`)
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
      prefill,
      chatReuse
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
