import { Command, Options } from "@effect/cli"
import { Console, Effect, Option, Schema } from "effect"
import { defaultBenchSettings } from "../bench/BenchSettings.js"
import type { BenchMode, BenchSettings } from "../bench/BenchSettings.js"
import { SpawnVariantFromString } from "../bench/SpawnVariant.js"

/** A comma-separated list of positive integers, e.g. `1,4,8,16`. */
const LevelList = Schema.String.pipe(
  Schema.pattern(/^\s*\d+(\s*,\s*\d+)*\s*$/, { message: () => "a comma-separated list of integers, e.g. 1,4,8,16" }),
  Schema.transform(Schema.Array(Schema.Int.pipe(Schema.between(1, 256))), {
    strict: true,
    decode: (text) => text.split(",").map((part) => Number(part.trim())),
    encode: (levels) => levels.join(",")
  })
)

/** Flags that each parse but do not fit together. */
export class BenchFlagsInvalid extends Schema.TaggedError<BenchFlagsInvalid>()("BenchFlagsInvalid", { message: Schema.String }) {}

const positive = (name: string, fallback: number, description: string) =>
  Options.integer(name).pipe(
    Options.withSchema(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))),
    Options.withDefault(fallback),
    Options.withDescription(description)
  )

const options = {
  url: Options.text("url").pipe(
    Options.withDescription("Measure any OpenAI-compatible server at this base URL (e.g. http://127.0.0.1:8080)"),
    Options.optional
  ),
  urlModel: Options.text("url-model").pipe(
    Options.withDescription("Model name sent to --url (default: the first one its /v1/models lists)"),
    Options.optional
  ),
  apiKey: Options.text("api-key").pipe(Options.withDescription("Bearer token for --url"), Options.optional),
  urlName: Options.text("url-name").pipe(Options.withDescription("Name of the --url server in the tables"), Options.optional),
  urlPid: Options.integer("url-pid").pipe(
    Options.withDescription("Process id of the server behind --url (Linux): its CPU is then not counted as other load"),
    Options.optional
  ),
  spawn: Options.boolean("spawn").pipe(Options.withDescription("Start `weft serve` in a child process and measure it over HTTP (prebuilt binary)")),
  spawnNative: Options.boolean("spawn-native").pipe(
    Options.withDescription("Like --spawn, on the native build of `weft build-native` (measured interleaved with the others)")
  ),
  variant: Options.text("variant").pipe(
    Options.repeated,
    Options.withDescription(
      "Also start `weft serve` with more flags and environment variables and measure it as a mode named NAME: \"NAME: --binary native UV_THREADPOOL_SIZE=1\" (UPPER_CASE=value words are variables; repeatable)"
    ),
    Options.withSchema(Schema.mutable(Schema.Array(SpawnVariantFromString)))
  ),
  busy: Options.integer("busy").pipe(
    Options.withSchema(Schema.Int.pipe(Schema.between(0, 64))),
    Options.withDefault(defaultBenchSettings.busy),
    Options.withDescription("Keep this many busy processes (for (;;) {}) running for the whole run: the servers measured under a competing load")
  ),
  inProcess: Options.boolean("in-process").pipe(Options.withDescription("Measure the scheduler in this process, without HTTP")),
  ceiling: Options.boolean("ceiling").pipe(
    Options.withDescription(
      "Also measure llama_decode alone at each level (one token per sequence, no sampling): the most any server on this binary could stream (on by default when no mode is named)"
    )
  ),
  naive: Options.boolean("naive").pipe(
    Options.withDescription("Measure node-llama-cpp used directly: one sequence.evaluate loop per stream, threads = cores")
  ),
  model: Options.file("model").pipe(
    Options.withDescription("GGUF for the naive, in-process and spawn modes (default: the generated bench model)"),
    Options.optional
  ),
  dataDir: Options.directory("data-dir").pipe(
    Options.withDefault(defaultBenchSettings.dataDir),
    Options.withDescription("Where the bench model is generated and kept")
  ),
  levels: Options.text("levels").pipe(
    Options.withSchema(LevelList),
    Options.withDefault(defaultBenchSettings.levels),
    Options.withDescription("Closed-loop concurrency levels")
  ),
  promptTokens: positive("prompt-tokens", defaultBenchSettings.promptTokens, "Prompt length in tokens, BOS included"),
  completionTokens: positive("completion-tokens", defaultBenchSettings.completionTokens, "Tokens generated per request (ignore_eos)"),
  completionSpread: Options.integer("completion-spread").pipe(
    Options.withSchema(Schema.Int.pipe(Schema.greaterThanOrEqualTo(0))),
    Options.withDefault(defaultBenchSettings.completionSpread),
    Options.withDescription(
      "Vary each request's completion length uniformly by up to this many tokens around --completion-tokens (the same lengths in every mode), so requests end at different times"
    )
  ),
  seconds: positive("seconds", defaultBenchSettings.seconds, "Measurement window per level, after the streams have ramped up"),
  threads: positive("threads", defaultBenchSettings.threads, "llama.cpp threads (default: the cores)"),
  parallel: Options.integer("parallel").pipe(
    Options.withDescription("Sequences of the Weft engine (default: the largest level)"),
    Options.optional
  ),
  contextSize: positive("ctx-size", defaultBenchSettings.contextSize, "Context per sequence"),
  batchSize: Options.integer("batch-size").pipe(Options.withDescription("Weft's --batch-size"), Options.optional),
  flashAttention: Options.choice("flash-attention", ["on", "off"]).pipe(
    Options.withDefault("on" as const),
    Options.withDescription("Flash attention in the Weft modes (naive keeps node-llama-cpp's default)")
  ),
  gpu: Options.choice("gpu", ["auto", "off"]).pipe(Options.withDefault("auto" as const), Options.withDescription("GPU offloading")),
  prefillTokens: Options.integer("prefill-tokens").pipe(
    Options.withDefault(2000),
    Options.withDescription("Long-prompt probe: its prompt length; 0 skips the probe")
  ),
  prefillStreams: positive("prefill-streams", 8, "Long-prompt probe: streams already running"),
  chatReuse: Options.boolean("chat-reuse").pipe(
    Options.withDescription(
      "Also run the multi-turn chat scenario in-process: prompt tokens evaluated and TTFT per turn with the prefix cache on and off (alone, with no mode named: only it runs)"
    )
  ),
  chatTurns: positive("chat-turns", 10, "Chat scenario: turns of the conversation"),
  chatSystemRepeat: positive("chat-system-repeat", 60, "Chat scenario: the system prompt is one sentence (about 12 tokens) repeated this often"),
  clusterAffinity: Options.text("cluster-affinity").pipe(
    Options.withPseudoName("POSTGRES_URL"),
    Options.withDescription(
      "Run only the cluster scenario on this Postgres: one conversation over --replicas spawned replicas, turn by turn through each in turn; prompt tokens evaluated per turn behind plain round-robin versus with --cluster's session affinity"
    ),
    Options.optional
  ),
  replicas: positive("replicas", 3, "Cluster scenario: replicas"),
  jsCost: Options.boolean("js-cost").pipe(
    Options.withDescription(
      "Run only the JS-cost probe: server CPU per streamed token and per request of Weft's own code (the whole HTTP API over the simulated backend, no model)"
    )
  ),
  jsCostRequests: positive("js-cost-requests", 200, "JS-cost probe: 16-token completions measured (and a quarter as many of 256 tokens)"),
  jsCostTokenMs: positive(
    "js-cost-token-ms",
    1,
    "JS-cost probe: ms the simulated backend takes per token. A real decode takes several; the JS thread then idles between tokens"
  ),
  rounds: positive("rounds", defaultBenchSettings.rounds, "Measure every level this many times per mode, modes interleaved"),
  quietBelow: Options.integer("quiet-below").pipe(
    Options.withDefault(defaultBenchSettings.quietBelow),
    Options.withDescription("Before each measurement wait until other processes use less than this % CPU (0: don't wait)")
  ),
  quietMaxWait: positive("quiet-max-wait", defaultBenchSettings.quietMaxWaitSeconds, "Longest wait for --quiet-below, seconds"),
  out: Options.directory("out").pipe(
    Options.withDefault(defaultBenchSettings.outDir),
    Options.withDescription("Directory for the JSON and markdown results")
  ),
  temperature: Options.float("temperature").pipe(Options.withDefault(defaultBenchSettings.temperature))
}

/** The modes asked for, in the order they run; naive, in-process and spawn when neither a mode nor a variant is named. */
const modesOf = (
  selected: {
    readonly url: boolean
    readonly spawn: boolean
    readonly spawnNative: boolean
    readonly inProcess: boolean
    readonly naive: boolean
    readonly variants: boolean
  }
) => {
  const modes: Array<BenchMode> = []
  if (selected.naive) modes.push("naive")
  if (selected.inProcess) modes.push("in-process")
  if (selected.spawn) modes.push("spawn")
  if (selected.spawnNative) modes.push("spawn-native")
  if (selected.url) modes.push("url")
  return modes.length === 0 && !selected.variants ? defaultBenchSettings.modes : modes
}

/** How this run was invoked, for the report. */
const invocation = () => {
  // Quoted where a shell would need it (a `--variant` has spaces), so the line can be pasted back.
  const args = process.argv.slice(2).map((arg) => (/[\s"'$]/.test(arg) ? `'${arg.replaceAll("'", `'\\''`)}'` : arg))
  return args[0] === "bench" ? `weft ${args.join(" ")}` : `npm run bench -- ${args.join(" ")}`.trimEnd()
}

/** `weft bench`: a closed-loop load generator for Weft and any OpenAI-compatible server, with side-by-side baselines. */
export const benchCommand = Command.make("bench", options, (flags) =>
  Effect.gen(function*() {
    const url = Option.getOrUndefined(flags.url)
    if (Option.isSome(flags.clusterAffinity)) {
      const { runClusterAffinity } = yield* Effect.promise(() => import("../bench/ClusterAffinity.js"))
      const { ensureModel } = yield* Effect.promise(() => import("../model/generateModel.js"))
      const modelPath = Option.isSome(flags.model) ? flags.model.value : yield* Effect.orDie(ensureModel("bench", flags.dataDir))
      const engine = { modelPath, parallel: Option.getOrElse(flags.parallel, () => 2), contextSize: flags.contextSize, threads: flags.threads, flashAttention: flags.flashAttention === "on", gpu: flags.gpu === "off" ? false as const : "auto" as const }
      yield* Effect.orDie(runClusterAffinity(engine, { clusterUrl: flags.clusterAffinity.value, replicas: flags.replicas, turns: flags.chatTurns, systemRepeat: flags.chatSystemRepeat }))
      return
    }
    if (flags.jsCost) {
      const { measureJsCost } = yield* Effect.promise(() => import("../bench/JsCost.js"))
      const cost = yield* Effect.orDie(measureJsCost(flags.jsCostRequests, flags.jsCostTokenMs))
      yield* Console.log(
        `Weft's own JS, server CPU (all threads) over the simulated backend, ${cost.shortRequests} × 16-token and ${cost.longRequests} × 256-token streamed completions, ${flags.jsCostTokenMs} ms per token:\n` +
          `  per token    ${cost.perTokenMs.toFixed(3)} ms, ${cost.effectSteps.perToken.toFixed(1)} Effect steps\n` +
          `  per request  ${cost.perRequestMs.toFixed(2)} ms, ${cost.effectSteps.perRequest.toFixed(0)} Effect steps (besides its tokens)\n` +
          `  GET /health  ${cost.healthMs.toFixed(2)} ms, ${cost.effectSteps.health.toFixed(0)} Effect steps`
      )
      return
    }
    if (flags.completionSpread >= flags.completionTokens) {
      return yield* new BenchFlagsInvalid({
        message: `--completion-spread (${flags.completionSpread}) must be less than --completion-tokens (${flags.completionTokens})`
      })
    }
    const modeNamed = url !== undefined || flags.spawn || flags.spawnNative || flags.inProcess || flags.naive || flags.variant.length > 0
    // `--chat-reuse` alone runs only the chat scenario; with a mode or `--ceiling` it runs after them.
    const onlyChat = flags.chatReuse && !modeNamed && !flags.ceiling
    const settings: BenchSettings = {
      modes: onlyChat ? [] : modesOf({
          url: url !== undefined,
          spawn: flags.spawn,
          spawnNative: flags.spawnNative,
          inProcess: flags.inProcess,
          naive: flags.naive,
          variants: flags.variant.length > 0
        }),
      variants: flags.variant,
      busy: flags.busy,
      ceiling: flags.ceiling || !(modeNamed || flags.chatReuse),
      url,
      urlModel: Option.getOrUndefined(flags.urlModel),
      apiKey: Option.getOrUndefined(flags.apiKey),
      urlPid: Option.getOrUndefined(flags.urlPid),
      urlName: Option.getOrUndefined(flags.urlName),
      modelPath: Option.getOrUndefined(flags.model),
      dataDir: flags.dataDir,
      levels: flags.levels,
      promptTokens: flags.promptTokens,
      completionTokens: flags.completionTokens,
      completionSpread: flags.completionSpread,
      seconds: flags.seconds,
      temperature: flags.temperature,
      threads: flags.threads,
      parallel: Option.getOrUndefined(flags.parallel),
      contextSize: flags.contextSize,
      batchSize: Option.getOrUndefined(flags.batchSize),
      flashAttention: flags.flashAttention === "on",
      gpu: flags.gpu === "off" ? false : "auto",
      prefill: flags.prefillTokens > 0 && !onlyChat ? { streams: flags.prefillStreams, promptTokens: flags.prefillTokens } : undefined,
      chatReuse: flags.chatReuse ? { turns: flags.chatTurns, systemRepeat: flags.chatSystemRepeat } : undefined,
      rounds: flags.rounds,
      quietBelow: flags.quietBelow,
      quietMaxWaitSeconds: flags.quietMaxWait,
      outDir: flags.out
    }
    // Loaded only when benchmarking, so other commands' `--help` does not load node-llama-cpp.
    const { runBench } = yield* Effect.promise(() => import("../bench/Bench.js"))
    yield* runBench(settings, invocation())
  })).pipe(
    Command.withDescription(
      "Closed-loop streaming load generator: tok/s, TTFT, inter-token latency at each concurrency, naive and in-process side by side"
    )
  )
