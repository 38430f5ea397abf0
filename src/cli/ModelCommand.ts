import { Command, Options } from "@effect/cli"
import { Console, Effect, Option, Schema } from "effect"
import { DEFAULT_LORA_RANK, DEFAULT_LORA_SEED, generateLora, MAX_LORA_RANK } from "../model/generateLora.js"
import { DEFAULT_MODEL_SEED, generateModel, WeightType } from "../model/generateModel.js"
import { ModelPreset } from "../model/ModelPresets.js"

const preset = Options.choice("preset", ModelPreset.literals).pipe(
  Options.withDescription("Model size: tiny (tests), demo (npm start) or bench (~100M parameters)")
)

const out = Options.file("out").pipe(Options.withDescription("Where to write the .gguf file"))

const seed = Options.integer("seed").pipe(
  Options.withSchema(Schema.Int.pipe(Schema.between(0, 0xffffffff))),
  Options.withDefault(DEFAULT_MODEL_SEED),
  Options.withDescription("Seed of the weights; the same preset and seed give a byte-identical file")
)

const weights = Options.choice("weights", WeightType.literals).pipe(
  Options.withDefault("f16" as const),
  Options.withDescription("Weight type: f16, or f32 for a model `weft train` can fine-tune")
)

const contextLength = Options.integer("context-length").pipe(
  Options.withSchema(Schema.Int.pipe(Schema.between(8, 1 << 20))),
  Options.optional,
  Options.withDescription("Training context instead of the preset's (fine-tuning works on windows of this many tokens)")
)

const formatMebibytes = (bytes: number): string => `${(bytes / (1024 * 1024)).toFixed(1)} MiB`

const formatMillions = (count: number): string => `${(count / 1e6).toFixed(2)}M`

const generateCommand = Command.make("generate", { preset, out, seed, weights, contextLength }, (options) =>
  Effect.gen(function*() {
    const started = performance.now()
    const model = yield* generateModel({ ...options, contextLength: Option.getOrUndefined(options.contextLength) })
    const seconds = ((performance.now() - started) / 1000).toFixed(2)
    yield* Console.log(model.path)
    yield* Console.log(`  size        ${formatMebibytes(model.bytes)} (${model.bytes} bytes)`)
    yield* Console.log(`  parameters  ${formatMillions(model.parameters)} (${model.parameters})`)
    yield* Console.log(`  generated   in ${seconds}s (preset ${options.preset}, seed ${options.seed})`)
  })).pipe(Command.withDescription("Write a deterministic llama-architecture GGUF with random weights and a real tokenizer"))

const base = Options.choice("base", ModelPreset.literals).pipe(
  Options.withDescription("The generated model (preset) the adapter is for")
)

const rank = Options.integer("rank").pipe(
  Options.withSchema(Schema.Int.pipe(Schema.between(1, MAX_LORA_RANK))),
  Options.withDefault(DEFAULT_LORA_RANK),
  Options.withDescription("Rank of each low-rank update")
)

const loraSeed = Options.integer("seed").pipe(
  Options.withSchema(Schema.Int.pipe(Schema.between(0, 0xffffffff))),
  Options.withDefault(DEFAULT_LORA_SEED),
  Options.withDescription("Seed of the adapter's weights; the same base, rank and seed give a byte-identical file")
)

const generateLoraCommand = Command.make("generate-lora", { base, out, rank, seed: loraSeed }, (options) =>
  Effect.gen(function*() {
    const adapter = yield* generateLora(options)
    yield* Console.log(adapter.path)
    yield* Console.log(`  size        ${formatMebibytes(adapter.bytes)} (${adapter.bytes} bytes)`)
    yield* Console.log(`  parameters  ${formatMillions(adapter.parameters)} (${adapter.parameters})`)
    yield* Console.log(`  for         the ${options.base} model (rank ${options.rank}, seed ${options.seed}); serve with --lora NAME=${adapter.path}`)
  })).pipe(Command.withDescription("Write a deterministic LoRA adapter GGUF (random weights) for a generated model"))

/** `weft model …`: synthetic model files for tests, demos and benchmarks. */
export const modelCommand = Command.make("model").pipe(
  Command.withDescription("Synthetic GGUF models"),
  Command.withSubcommands([generateCommand, generateLoraCommand])
)
