import { Effect } from "effect"
import { InvalidParam } from "./HttpErrors.js"
import { quoteValue } from "./QuotedValue.js"

/** Fails with a 400 naming `param` when `tokens` holds an id outside the vocabulary `0 … vocabSize-1`. */
export const checkTokenIds = (tokens: ReadonlyArray<number>, vocabSize: number, param: string): Effect.Effect<void, InvalidParam> => {
  const invalid = tokens.find((token) => !Number.isInteger(token) || token < 0 || token >= vocabSize)
  return invalid === undefined
    ? Effect.void
    : Effect.fail(
      new InvalidParam({
        param,
        message: `Invalid value for '${param}': token id ${quoteValue(invalid)} is outside the model's vocabulary of ${vocabSize} tokens`,
        code: "invalid_token"
      })
    )
}
