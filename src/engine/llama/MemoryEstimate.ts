import { GgmlType, GgufInsights, readGgufFileInfo } from "node-llama-cpp"
import type { Llama } from "node-llama-cpp"

/** What a model and its one context will take in RAM, by node-llama-cpp's own estimates, before loading either. */
export interface LlamaMemoryEstimate {
  readonly weightsBytes: number
  /** KV cache and compute buffers of a context of `sequences` × `contextSize` cells. */
  readonly contextBytes: number
  /** The weights are mostly 16- or 32-bit floats. */
  readonly unquantized: boolean
  /** Layers go to a GPU. */
  readonly onGpu: boolean
}

const floatTypes: ReadonlyArray<GgmlType | undefined> = [GgmlType.F32, GgmlType.F16, GgmlType.BF16]

/** Reads the GGUF's header and tensor table (not its weights) and estimates RAM for loading it with these settings. */
export const estimateLlamaMemory = async (
  llama: Llama,
  modelPath: string,
  context: { readonly contextSize: number; readonly sequences: number; readonly batchSize: number; readonly flashAttention: boolean }
): Promise<LlamaMemoryEstimate> => {
  const insights = await GgufInsights.from(await readGgufFileInfo(modelPath), llama)
  const onGpu = llama.gpu !== false
  // On a GPU node-llama-cpp offloads as many layers as fit; all of them is the estimate that leaves the least in RAM.
  const gpuLayers = onGpu ? insights.totalLayers : 0
  const weights = await insights.estimateModelResourceRequirementsV2({ gpuLayers })
  const kv = await insights.estimateContextResourceRequirementsV2({
    contextSize: context.contextSize,
    sequences: context.sequences,
    batchSize: context.batchSize,
    flashAttention: context.flashAttention,
    modelGpuLayers: gpuLayers
  })
  return { weightsBytes: weights.cpuRam, contextBytes: kv.cpuRam, unquantized: floatTypes.includes(insights.dominantTensorType), onGpu }
}
