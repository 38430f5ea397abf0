import type { LlamaModel, Token } from "node-llama-cpp"
import type { ChatMessage } from "../Backend.js"
import type { ToolFunction } from "../ToolCallSyntax.js"
import { chatRenderer } from "./ChatRenderer.js"
import { makeSpecialTokenSplitter } from "./SpecialTokenSplitter.js"
import type { SpecialTokenText } from "./SpecialTokenSplitter.js"

/** What tokenization needs to know of a vocabulary, read once at load. */
export interface VocabTables {
  /** Tokens a raw prompt may spell out as text (llama.cpp's control, user-defined and unknown tokens). */
  readonly specials: ReadonlyArray<SpecialTokenText>
  /** UTF-8 bytes of the longest token's text: no token stands for more of a prompt than this. */
  readonly longestTokenBytes: number
}

/** Reads `model`'s vocabulary (token ids `0 … vocabSize-1`) into `VocabTables`. */
export const vocabTables = (model: LlamaModel, vocabSize: number): VocabTables => {
  const specials: Array<SpecialTokenText> = []
  let longestTokenBytes = 1
  for (let id = 0; id < vocabSize; id++) {
    const token = id as Token
    const text = model.detokenize([token], true)
    longestTokenBytes = Math.max(longestTokenBytes, Buffer.byteLength(text))
    const attributes = model.getTokenAttributes(token)
    if ((attributes.control || attributes.userDefined || attributes.unknown) && text.length > 0) {
      specials.push({
        token: id,
        text,
        lstrip: attributes.lstrip,
        rstrip: attributes.rstrip,
        alwaysParsed: attributes.userDefined && !attributes.control && !attributes.unknown
      })
    }
  }
  return { specials, longestTokenBytes }
}

/** Tokenization with one model's vocabulary: the same on the main thread and in `TokenizerWorker`. */
export interface VocabTokenizer {
  /** `special`: special-token text is parsed, as llama-server does for raw prompts. */
  readonly tokenize: (text: string, special: boolean) => Array<Token>
  /** Throws what the chat template throws. */
  readonly renderChat: (messages: ReadonlyArray<ChatMessage>, tools?: ReadonlyArray<ToolFunction>) => Array<Token>
}

/**
 * Special-token text is cut out here in linear time and the plain pieces tokenized with special=false (each as
 * llama.cpp tokenizes a piece after a special token), so llama.cpp's own special-token pass, superlinear on texts
 * full of special tokens, finds nothing to do.
 */
export const makeVocabTokenizer = (model: LlamaModel, specials: ReadonlyArray<SpecialTokenText>): VocabTokenizer => {
  const split = makeSpecialTokenSplitter(specials)
  // Without special parsing llama.cpp still matches user-defined tokens; cutting those out here keeps it cheap too.
  const splitUserDefined = makeSpecialTokenSplitter(specials.filter((special) => special.alwaysParsed))
  const tokenize = (text: string, special: boolean): Array<Token> => {
    const tokens: Array<Token> = []
    for (const piece of (special ? split : splitUserDefined)(text)) {
      if (typeof piece === "number") tokens.push(piece as Token)
      else for (const token of model.tokenize(piece, false)) tokens.push(token)
    }
    return tokens
  }
  return { tokenize, renderChat: chatRenderer(model).render }
}
