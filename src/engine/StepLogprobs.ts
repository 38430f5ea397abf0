import { logprobFloor } from "./Backend.js"
import type { StepLogprobs } from "./Backend.js"

const logOf = (probability: number) => (probability > 0 ? Math.max(Math.log(probability), logprobFloor) : logprobFloor)

/**
 * The sampled `token`'s log probability and the `topCount` most likely tokens, from one step's probabilities
 * (listed most likely first, as node-llama-cpp's map is ordered).
 */
export const stepLogprobs = (
  probabilities: ReadonlyMap<number, number>,
  token: number,
  topCount: number
): StepLogprobs => {
  const top: Array<{ readonly token: number; readonly logprob: number }> = []
  if (topCount > 0) {
    for (const [candidate, probability] of probabilities) {
      top.push({ token: candidate, logprob: logOf(probability) })
      if (top.length >= topCount) break
    }
  }
  return { logprob: logOf(probabilities.get(token) ?? 0), top }
}
