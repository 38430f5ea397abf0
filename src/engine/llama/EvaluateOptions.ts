import { LlamaGrammarEvaluationState } from "node-llama-cpp"
import type { LlamaGrammar, LlamaModel, SequenceEvaluateOptions, Token, TokenBias } from "node-llama-cpp"
import type { SamplingOptions } from "../SamplingOptions.js"

/** How many penalised tokens llama.cpp looks back over (its `penalty_last_n` default). */
const penaltyWindow = 64

/**
 * node-llama-cpp's `sequence.evaluate` options for one generation's sampling on `model`: `generated` is the
 * generation's own output so far (what the repetition penalties look at), `banEndOfGeneration` the bias `ignore_eos`
 * applies, `grammar` the constraint it samples under, if any.
 */
export const evaluateOptions = (
  model: LlamaModel,
  banEndOfGeneration: TokenBias,
  sampling: SamplingOptions,
  generated: ReadonlyArray<Token>,
  grammar: LlamaGrammar | undefined
): SequenceEvaluateOptions => {
  const options: SequenceEvaluateOptions = {
    temperature: sampling.temperature,
    topK: sampling.topK,
    topP: sampling.topP,
    minP: sampling.minP,
    seed: sampling.seed,
    yieldEogToken: true
  }
  // Never under a grammar: once it is complete only end-of-generation is allowed, and with that banned llama.cpp's
  // sampler fails to accept the token it picks instead, inside node-llama-cpp's batch dispatch, where the failure
  // settles no promise and the whole context stops decoding.
  if (sampling.ignoreEos && grammar === undefined) options.tokenBias = banEndOfGeneration
  if (grammar !== undefined) options.grammarEvaluationState = new LlamaGrammarEvaluationState({ model, grammar })
  if (sampling.repeatPenalty !== 1 || sampling.presencePenalty !== 0 || sampling.frequencyPenalty !== 0) {
    options.repeatPenalty = {
      punishTokens: () => generated.slice(-penaltyWindow),
      maxPunishTokens: penaltyWindow,
      penalty: sampling.repeatPenalty,
      presencePenalty: sampling.presencePenalty,
      frequencyPenalty: sampling.frequencyPenalty
    }
  }
  return options
}
