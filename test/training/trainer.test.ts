import { Deferred, Effect, Exit, Fiber } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { Llama } from "node-llama-cpp"
import type { TrainingExample } from "../../src/training/datasets/DatasetRecord.js"
import { sha256File } from "../../src/training/Checkpoints.js"
import { ModelNotTrainable, train, type TrainingProgress } from "../../src/training/Trainer.js"
import { tinyF32ModelPath, tinyModelPath } from "../support/tinyModel.js"
import { runWeftInProcess } from "../support/weftCli.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-train-"))

const f32Model = tinyF32ModelPath

const question = (subject: string) => `Q: where is the ${subject}?\nA:`

/** A learnable pattern: whatever the subject, the answer is the same. */
const examples = (count: number, offset = 0): Array<TrainingExample> =>
  Array.from({ length: count }, (_, at) => ({ _tag: "Completion", prompt: question(`thing ${at + offset}`), completion: " in the garden\n" }))

/** Greedy continuation of `prompt` by the model at `modelPath`, through node-llama-cpp as serving loads it. */
let llamaOnce: Promise<Llama> | undefined
const complete = async (modelPath: string, prompt: string): Promise<string> => {
  const { getLlama, LlamaCompletion, LlamaLogLevel } = await import("node-llama-cpp")
  // One binary per file: each getLlama tests the binary in a child process first (seconds on a loaded machine).
  llamaOnce ??= getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error })
  const llama = await llamaOnce
  const model = await llama.loadModel({ modelPath })
  const context = await model.createContext({ contextSize: 256 })
  try {
    return await new LlamaCompletion({ contextSequence: context.getSequence() }).generateCompletion(prompt, { maxTokens: 6, temperature: 0 })
  } finally {
    await context.dispose()
    await model.dispose()
  }
}

describe("train", () => {
  it("refuses an F16 model, saying how to get an F32 one", async () => {
    const failure = await Effect.runPromise(Effect.flip(train({
      modelPath: await tinyModelPath(),
      examples: examples(4),
      epochs: 1,
      batchSize: 1,
      learningRate: 1e-3,
      schedule: "constant",
      weightDecay: 0,
      threads: 1,
      out: path.join(dir, "never.gguf"),
      checkpointEvery: 0,
      minDelta: 0,
      onProgress: () => Effect.void
    })))
    expect(failure).toBeInstanceOf(ModelNotTrainable)
    expect(failure.message).toContain("F16")
    expect(failure.message).toContain("--weights f32")
  })

  it("on a learnable pattern the loss falls by far and the tuned model answers with it where the base does not", async () => {
    const modelPath = await f32Model()
    const progress: Array<TrainingProgress> = []
    const out = path.join(dir, "tuned.gguf")
    const result = await Effect.runPromise(train({
      modelPath,
      examples: examples(40),
      epochs: 4,
      batchSize: 1,
      learningRate: 1e-2,
      schedule: "cosine",
      weightDecay: 0,
      threads: 1,
      out,
      checkpointDir: path.join(dir, "checkpoints"),
      checkpointEvery: 2,
      minDelta: 0,
      onProgress: (event) => Effect.sync(() => progress.push(event))
    }))
    const steps = progress.filter((event) => event._tag === "Step")
    expect(steps.length).toBe(result.steps)
    expect(steps.at(-1)!.step).toBe(steps.at(-1)!.totalSteps)
    expect(steps.every((event) => event.tokensPerSecond > 0 && event.etaSeconds >= 0)).toBe(true)
    // A large margin: the last step's loss is under a third of the first's.
    expect(steps.at(-1)!.loss).toBeLessThan(steps[0]!.loss / 3)
    expect(result.epochLosses.at(-1)!).toBeLessThan(result.epochLosses[0]!)
    // Checkpoints every 2 steps and at each epoch's end, each a complete file (no partial left behind); without
    // validation data the latest 3 stay.
    const saved = progress.flatMap((event) => event._tag === "Checkpoint" ? [event.path] : [])
    expect(saved.length).toBeGreaterThanOrEqual(result.epochs)
    expect(result.checkpoints).toEqual(saved.slice(-3))
    for (const checkpoint of result.checkpoints) expect(fs.statSync(checkpoint).size).toBeGreaterThan(1_000_000)
    expect(fs.readdirSync(path.join(dir, "checkpoints")).filter((file) => file.endsWith(".partial"))).toEqual([])

    const unseen = question("thing 999")
    const base = await complete(modelPath, unseen)
    const tuned = await complete(out, unseen)
    console.log(JSON.stringify({ epochLosses: result.epochLosses, first: steps[0]!.loss, last: steps.at(-1)!.loss, base, tuned }))
    expect(base).not.toContain("garden")
    expect(tuned).toContain("in the garden")
  }, 600_000)

  it("on chat data the loss and accuracy cover the assistant's turns only, which are learned even when the user's are noise (validation split off the data)", async () => {
    const words = ["apple", "river", "stone", "cloud", "lamp", "tiger", "paper", "glass", "storm", "mouse", "bread", "chair"]
    let seed = 7
    const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
    // The user's turns are random words no model can predict; the assistant's answer is always the same.
    const chats = (count: number): Array<TrainingExample> =>
      Array.from({ length: count }, () => ({
        _tag: "Chat",
        messages: [
          { role: "user", content: Array.from({ length: 6 }, () => words[Math.floor(random() * words.length)]).join(" ") + "?" },
          { role: "assistant", content: "in the garden" }
        ]
      }))
    const progress: Array<TrainingProgress> = []
    const result = await Effect.runPromise(train({
      modelPath: await f32Model(),
      // 8 of these, spread over the list, are held out as the validation set.
      examples: chats(38),
      validationSplit: 8 / 38,
      epochs: 2,
      batchSize: 1,
      learningRate: 1e-2,
      schedule: "cosine",
      weightDecay: 0,
      threads: 1,
      out: path.join(dir, "chat.gguf"),
      checkpointEvery: 0,
      minDelta: 0,
      onProgress: (event) => Effect.sync(() => progress.push(event))
    }))
    const steps = progress.filter((event) => event._tag === "Step")
    const epochs = progress.filter((event) => event._tag === "Epoch")
    // Counting the user's words, the loss could not go under ~0.5 nats a token (6 of ~25 tokens are 1-in-12 guesses).
    expect(steps.at(-1)!.loss).toBeLessThan(0.1)
    expect(steps.at(-1)!.accuracy).toBe(1)
    expect(epochs.at(-1)!.validationAccuracy).toBe(1)
    expect(result.validationLosses.length).toBe(2)
    expect(result.validationLosses.at(-1)!).toBeLessThan(0.1)
  }, 300_000)

  it("stops early when the validation loss stops improving, ends with the best checkpoint's weights and says why", async () => {
    // Training teaches one answer; part of the validation set expects another: its loss falls while the shared format
    // is learned, then rises as the training answer takes over.
    const validation = [
      ...examples(8, 500),
      ...Array.from({ length: 6 }, (_, at): TrainingExample => ({ _tag: "Completion", prompt: question(`thing ${600 + at}`), completion: " on the roof\n" }))
    ]
    const checkpointDir = path.join(dir, "early-api")
    const out = path.join(dir, "early-api.gguf")
    const result = await Effect.runPromise(train({
      modelPath: await f32Model(),
      examples: examples(40),
      validation,
      epochs: 12,
      batchSize: 1,
      learningRate: 1e-2,
      schedule: "constant",
      weightDecay: 0,
      threads: 1,
      out,
      checkpointDir,
      checkpointEvery: 0,
      patience: 1,
      minDelta: 0,
      onProgress: () => Effect.void
    }))
    expect(result.stoppedBecause).toBe("early-stopping")
    expect(result.epochs).toBeLessThan(12)
    const losses = result.validationLosses
    const bestEpoch = losses.indexOf(Math.min(...losses)) + 1
    // It improved for a while, then one epoch (the patience) without improvement ended it.
    expect(bestEpoch).toBeGreaterThan(1)
    expect(result.epochs).toBe(bestEpoch + 1)
    expect(result.bestEpoch).toBe(bestEpoch)
    expect(result.bestValidationLoss).toBe(losses[bestEpoch - 1])
    expect(result.stopReason).toContain(`no improvement for 1 epoch`)
    expect(result.stopReason).toContain(`epoch ${bestEpoch}`)
    // The result is the best epoch's checkpoint, byte for byte.
    const best = result.keptCheckpoints.find((kept) => kept.epoch === bestEpoch)!
    expect(best.validationLoss).toBe(result.bestValidationLoss)
    expect(await sha256File(out)).toBe(best.sha256)
  }, 300_000)

  it("weft train stops early when validation loss stops improving by --min-delta, keeps the best weights, and prints progress", async () => {
    const modelPath = await f32Model()
    const write = (name: string, records: ReadonlyArray<TrainingExample>) => {
      const file = path.join(dir, name)
      fs.writeFileSync(file, records.map((record) => JSON.stringify(record._tag === "Completion" ? { prompt: record.prompt, completion: record.completion } : record)).join("\n"))
      return file
    }
    const data = write("train.jsonl", examples(16))
    const validation = write("validation.jsonl", examples(16, 500))
    const out = path.join(dir, "early.gguf")
    const checkpoints = path.join(dir, "early-checkpoints")
    // In this process: the test is about what the command does and prints, not about the process.
    const run = await runWeftInProcess([
      "train", "--model", modelPath, "--data", data, "--validation", validation,
      "--epochs", "6", "--learning-rate", "0.01", "--threads", "1", "--patience", "1", "--min-delta", "100", "--out", out, "--checkpoint-dir", checkpoints
    ])
    expect(run.code).toBe(0)
    // No later epoch can beat the first by 100 nats: patience 1 stops after epoch 2.
    expect(run.stdout).toContain("2 epochs, stopped: early-stopping")
    expect(run.stderr).toMatch(/epoch 1 step 1\/\d+ \[[#-]+\] loss \d+\.\d+ acc \d\.\d+ lr \S+ \d+ tok\/s ETA \d+:\d\d/)
    expect(run.stderr).toContain("validation loss")
    expect(run.stderr).not.toContain("epoch 3 ")
    // The result is the best (first) epoch's weights, not the last.
    expect(fs.readFileSync(out).equals(fs.readFileSync(path.join(checkpoints, "best.gguf")))).toBe(true)
  }, 600_000)

  it("weft train refuses an F16 model with exit code 1 and says how to get an F32 one", async () => {
    const data = path.join(dir, "refuse.jsonl")
    fs.writeFileSync(data, JSON.stringify({ prompt: "a", completion: "b" }) + "\n")
    const failed = await runWeftInProcess(["train", "--model", await tinyModelPath(), "--data", data, "--out", path.join(dir, "x.gguf")])
    expect(failed.code).toBe(1)
    expect(failed.stderr).toContain("trains only F32 tensors")
  }, 120_000)

  it("a run interrupted after its first step stops between steps and writes no result", async () => {
    const modelPath = await f32Model()
    const out = path.join(dir, "cancelled.gguf")
    const steps: Array<number> = []
    const exit = await Effect.runPromise(Effect.gen(function*() {
      const firstStep = yield* Deferred.make<void>()
      const fiber = yield* Effect.fork(train({
        modelPath,
        examples: examples(40),
        epochs: 2,
        batchSize: 1,
        learningRate: 1e-3,
        schedule: "constant",
        weightDecay: 0,
        threads: 1,
        out,
        checkpointEvery: 0,
        minDelta: 0,
        onProgress: (event) => event._tag === "Step" ? Effect.zipRight(Effect.sync(() => steps.push(event.totalSteps)), Deferred.succeed(firstStep, undefined)) : Effect.void
      }))
      yield* Deferred.await(firstStep)
      yield* Fiber.interrupt(fiber)
      return yield* Fiber.await(fiber)
    }))
    expect(Exit.isInterrupted(exit)).toBe(true)
    // The step in flight when the interrupt came may finish; none starts after it.
    expect(steps.length).toBeLessThanOrEqual(2)
    expect(steps[0]!).toBeGreaterThan(2)
    expect(fs.existsSync(out)).toBe(false)
  }, 300_000)
})
