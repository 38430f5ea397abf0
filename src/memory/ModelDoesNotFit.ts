import { Schema } from "effect"
import { formatBytes } from "./MemoryManager.js"

/**
 * A model would take the committed memory past `--memory-limit`; it was refused before anything was loaded. The
 * message gives the numbers and the ways out that apply.
 */
export class ModelDoesNotFit extends Schema.TaggedError<ModelDoesNotFit>()("ModelDoesNotFit", {
  model: Schema.String,
  path: Schema.String,
  weightsBytes: Schema.Number,
  /** KV cache and compute buffers of its context (`parallel` × `contextSize` cells). */
  contextBytes: Schema.Number,
  contextSize: Schema.Number,
  parallel: Schema.Number,
  committedBytes: Schema.Number,
  limitBytes: Schema.Number,
  /** Models already holding memory, largest first. */
  others: Schema.Array(Schema.Struct({ model: Schema.String, bytes: Schema.Number })),
  /** The weights are 16- or 32-bit floats, so a quantized file would be several times smaller. */
  unquantized: Schema.Boolean,
  /** Layers are offloaded to a GPU. */
  onGpu: Schema.Boolean
}) {
  override get message(): string {
    const needed = this.weightsBytes + this.contextBytes
    const free = Math.max(0, this.limitBytes - this.committedBytes)
    const ways = [
      `a smaller --ctx-size or --parallel (the KV cache and compute buffers, ${formatBytes(this.contextBytes)} for ` +
      `${this.parallel} × ${this.contextSize} tokens, shrink with them)`,
      this.unquantized
        ? `a quantized GGUF of this model (e.g. Q4_K_M: about a quarter of its ${formatBytes(this.weightsBytes)} of 16-bit weights)`
        : `a more strongly quantized GGUF (its weights take ${formatBytes(this.weightsBytes)})`,
      ...this.others.map((other) => `unloading model ${other.model} (DELETE /admin/models/${other.model} frees ${formatBytes(other.bytes)})`),
      ...(this.onGpu ? ["--gpu off (weights in RAM instead of GPU memory)"] : []),
      `a larger --memory-limit (now ${formatBytes(this.limitBytes)})`
    ]
    return `model ${this.model} (${this.path}) does not fit in memory: it needs ${formatBytes(needed)} ` +
      `(weights ${formatBytes(this.weightsBytes)} + KV cache and compute buffers ${formatBytes(this.contextBytes)}), but only ` +
      `${formatBytes(free)} of the ${formatBytes(this.limitBytes)} --memory-limit is free ` +
      `(${formatBytes(this.committedBytes)} committed). Ways out: ${ways.join("; ")}.`
  }
}
