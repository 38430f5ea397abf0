import { Effect, Layer } from "effect"
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { Backend } from "../../src/engine/Backend.js"
import type { LlamaBackendConfig, ModelLoadFailed } from "../../src/engine/llama/LlamaBackend.js"
import { llamaBackendLayer } from "../../src/host/LocalEngine.js"
import type { ModelDoesNotFit } from "../../src/memory/ModelDoesNotFit.js"
import { ensureModel, generateModel } from "../../src/model/generateModel.js"

/** The generator's sources: any change to them gives a fresh cache directory, so a stale model is never reused. */
const generatorSources = ["generateModel.ts", "GgufWriter.ts", "ModelPresets.ts", "SyntheticVocab.ts", "Float16.ts"]

const cacheDir = (): string => {
  const hash = createHash("sha256")
  for (const file of generatorSources) {
    hash.update(fs.readFileSync(new URL(`../../src/model/${file}`, import.meta.url)))
  }
  return path.join(os.tmpdir(), `weft-test-models-${hash.digest("hex").slice(0, 12)}`)
}

/**
 * Path of the tiny test model: generated once into a temp cache dir and reused by every test file and later runs
 * (the file is written atomically, so concurrent first uses are safe).
 */
export const tinyModelPath = (): Promise<string> => Effect.runPromise(ensureModel("tiny", cacheDir()))

/**
 * The tiny model with F32 weights and a 256-token training context (llama.cpp trains only F32 tensors and pads contexts
 * to 256 tokens), cached beside the tiny model.
 */
export const tinyF32ModelPath = async (): Promise<string> => {
  const modelPath = path.join(cacheDir(), "tiny-f32-ctx256.gguf")
  if (fs.existsSync(modelPath)) return modelPath
  const model = await Effect.runPromise(generateModel({ preset: "tiny", weights: "f32", contextLength: 256, out: modelPath }))
  return model.path
}

/** The model id the server reports for the tiny model. */
export const tinyModelId = "weft-tiny-s42"

/** LlamaBackend (as `weft serve` wraps it) on the tiny model, CPU only, two threads: the test machine's cores. */
export const tinyBackend = (overrides: Partial<Omit<LlamaBackendConfig, "modelPath">> = {}): Layer.Layer<Backend, ModelLoadFailed | ModelDoesNotFit> =>
  Layer.unwrapEffect(
    Effect.map(Effect.promise(tinyModelPath), (modelPath) =>
      llamaBackendLayer({ modelPath, parallel: 4, contextSize: 512, threads: 2, gpu: false, ...overrides }))
  )
