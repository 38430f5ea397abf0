import * as os from "node:os"
import { Schema } from "effect"
import type { ChatReuseResult, ChatReuseSettings } from "./ChatReuse.js"
import type { CeilingResult } from "./DecodeCeiling.js"
import type { LevelResult } from "./LevelResult.js"
import type { PrefillProbeResult } from "./PrefillProbe.js"
import type { SpawnVariant } from "./SpawnVariant.js"

/** `--model` names a file that cannot be read. */
export class BenchModelMissing extends Schema.TaggedError<BenchModelMissing>()("BenchModelMissing", {
  path: Schema.String
}) {
  override get message() {
    return `model file not found or not readable: ${this.path}`
  }
}

/** A way of serving the same workload that the bench measures. */
export type BenchMode = "naive" | "in-process" | "spawn" | "spawn-native" | "url"

/** Everything one `weft bench` run does. */
export interface BenchSettings {
  readonly modes: ReadonlyArray<BenchMode>
  /** More `weft serve` children, each with its own flags and environment, measured after the modes (`--variant`). */
  readonly variants: ReadonlyArray<SpawnVariant>
  /** Busy processes (`for (;;) {}`) kept running on the machine for the whole run, as a competing load (`--busy`). */
  readonly busy: number
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
  /**
   * Each request's completion length is drawn from `completionTokens` ± this, by request index (the same lengths in
   * every mode); 0 makes them all equal. Requests of different lengths end at different times, as real ones do, which
   * is what scatters a pool's running sequences over its slots.
   */
  readonly completionSpread: number
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
  /** Runs the multi-turn chat scenario: prefix reuse with the cache on and off (see `runChatReuse`). */
  readonly chatReuse: ChatReuseSettings | undefined
  /** Each level is measured this many times per mode, modes interleaved; the report takes medians. */
  readonly rounds: number
  /** Before each measurement, wait until other processes use less than this % of the CPU (0: never wait). */
  readonly quietBelow: number
  readonly quietMaxWaitSeconds: number
  readonly outDir: string
}

export const defaultBenchSettings: BenchSettings = {
  modes: ["naive", "in-process", "spawn"],
  variants: [],
  busy: 0,
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
  completionSpread: 0,
  seconds: 6,
  temperature: 0.8,
  threads: os.availableParallelism(),
  parallel: undefined,
  contextSize: 2560,
  batchSize: undefined,
  flashAttention: true,
  gpu: "auto",
  prefill: { streams: 8, promptTokens: 2000 },
  chatReuse: undefined,
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
  readonly chatReuse: ChatReuseResult | undefined
}
