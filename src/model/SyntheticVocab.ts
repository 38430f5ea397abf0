/** llama.cpp token types (`tokenizer.ggml.token_type`). */
export const TokenType = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const

/** A SentencePiece-style (`tokenizer.ggml.model = "llama"`) vocabulary, ready for GGUF metadata. */
export interface SyntheticVocab {
  readonly tokens: ReadonlyArray<string>
  readonly scores: Float32Array
  readonly tokenTypes: Int32Array
  readonly unknownTokenId: number
  readonly bosTokenId: number
  readonly eosTokenId: number
  readonly imStartTokenId: number
  readonly imEndTokenId: number
}

const SPACE = "\u2581"

const specialTokens = [
  { text: "<unk>", type: TokenType.unknown },
  { text: "<s>", type: TokenType.control },
  { text: "</s>", type: TokenType.control },
  { text: "<|im_start|>", type: TokenType.control },
  { text: "<|im_end|>", type: TokenType.control }
] as const

const byteTokenText = (byte: number): string => `<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`

const lowercase = [..."abcdefghijklmnopqrstuvwxyz"]
const uppercase = [..."ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
const digits = [..."0123456789"]
const punctuation = [...".,!?'\"-:;()/&%$#@*+=_[]{}<>|~`^\\"]
// Some common non-ASCII characters get their own pieces; others (ø, å, emoji, ...) are left to byte fallback on purpose.
const multiByteCharacters = [..."éèêàâçüöäßñíóáú“”‘’–—…€£°×日本語中文人世界のはです"]

const englishBigrams = [
  "th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of", "ed", "is", "it",
  "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co", "me", "de", "hi", "ri",
  "ro", "ic", "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si", "om", "ur", "ca", "el", "ta", "la",
  "ns", "di", "fo", "ho", "pe", "ec", "pr", "no", "ct", "us", "ac", "ot", "il", "tr", "ly", "nc", "et", "ut",
  "ss", "so", "rs", "un", "lo", "wa", "ge", "ie", "wh", "ee", "wi", "em", "ad", "ol", "rt", "po", "we", "na"
]

const commonWords = [
  "the", "hello", "world", "weather", "and", "of", "to", "a", "in", "is", "you", "that", "it", "he", "was",
  "for", "on", "are", "as", "with", "his", "they", "I", "at", "be", "this", "have", "from", "or", "one", "had",
  "by", "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an",
  "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then",
  "them", "these", "so", "some", "her", "would", "make", "like", "him", "into", "time", "has", "look", "two",
  "more", "write", "go", "see", "number", "no", "way", "could", "people", "my", "than", "first", "water",
  "been", "call", "who", "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may",
  "part", "today", "tomorrow", "sunny", "rain", "cloudy", "warm", "cold", "model", "token", "text", "story",
  "once", "upon", "little", "small", "big", "good", "great", "new", "old", "name", "thing", "know", "think",
  "question", "answer", "help", "please", "thank", "thanks", "yes", "here", "where", "why", "because", "very",
  "just", "over", "also", "after", "before", "back", "only", "well", "year", "work", "life", "city", "house",
  "café", "naïve", "über", "résumé", "señor", "déjà", "vu", "Zürich", "München"
]

const capitalizedWords = [
  "The", "Hello", "World", "This", "It", "We", "You", "He", "She", "They", "In", "Once", "What", "How", "Why",
  "Yes", "No", "Thank", "Today", "There"
]

const symbolPieces = [
  "...", "'s", "n't", "'re", "'ll", "'ve", ".\"", ",\"", "?\"", "!\"", "),", ").", "()", "();", "{}", "[]", "//",
  "==", "=>", "->", "!=", "<=", ">=", "**", "--", "10", "20", "00", "100", "000", "19", "2024", "2025", "1.",
  "2.", "3.", "%.", "$1", "€1", "日本", "日本語", "中文", "世界", "です", "は世界"
]

const spacedSymbols = ["(", "\"", "-", "—", "=", "{", "//", "*", "€", "$", "#", "&", "'", "[", "日本", "…"]

const onsets = [
  "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z",
  "th", "ch", "sh", "st", "tr", "pr", "br", "gr", "cl", "fl", "pl", "sp", "wh", "qu"
]
const nuclei = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "ee", "oo", "y"]
const codas = ["", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck", "rt", "ll", "ss", "x"]

// Fixed, so every model seed shares one tokenizer.
const FILLER_SEED = 0x5eed_70c5

const nextFillerRandom = (state: { value: number }): number => {
  let x = state.value
  x ^= x << 13
  x ^= x >>> 17
  x ^= x << 5
  state.value = x >>> 0
  return state.value
}

/** Builds pieces in priority order; a piece's shorter prefixes come first so llama.cpp's SPM bigram merges can reach it. */
class PieceList {
  readonly pieces: Array<string> = []
  private readonly seen = new Set<string>()

  constructor(private readonly capacity: number) {}

  get full(): boolean {
    return this.pieces.length >= this.capacity
  }

  add(piece: string): void {
    if (this.full || this.seen.has(piece)) return
    const characters = [...piece]
    if (characters.length >= 3) this.add(characters.slice(0, -1).join(""))
    if (this.full) return
    this.seen.add(piece)
    this.pieces.push(piece)
  }
}

const syllables = (): Array<string> =>
  onsets.flatMap((onset) => nuclei.flatMap((nucleus) => codas.map((coda) => onset + nucleus + coda)))

const fillPieces = (list: PieceList): void => {
  for (const character of [SPACE, ...lowercase, ...uppercase, ...digits, ...punctuation, ...multiByteCharacters]) {
    list.add(character)
  }
  for (const character of [...lowercase, ...uppercase, ...digits]) list.add(SPACE + character)
  for (const bigram of englishBigrams) list.add(bigram)
  for (const word of commonWords) list.add(SPACE + word)
  for (const word of capitalizedWords) list.add(SPACE + word)
  for (const piece of symbolPieces) list.add(piece)
  for (const symbol of spacedSymbols) list.add(SPACE + symbol)
  for (const word of commonWords) list.add(word)

  const allSyllables = syllables()
  for (const syllable of allSyllables) {
    list.add(syllable)
    list.add(SPACE + syllable)
  }

  const random = { value: FILLER_SEED }
  while (!list.full) {
    const syllableCount = 2 + (nextFillerRandom(random) % 2)
    let word = (nextFillerRandom(random) & 1) === 0 ? SPACE : ""
    for (let i = 0; i < syllableCount; i++) word += allSyllables[nextFillerRandom(random) % allSyllables.length]
    list.add(word)
  }
}

/** Smallest vocabulary that still holds the special tokens, byte tokens and single characters. */
export const minimumVocabSize = specialTokens.length + 256 + 1 + lowercase.length + uppercase.length + digits.length +
  punctuation.length + multiByteCharacters.length

/** Constructors for synthetic vocabularies. */
export const SyntheticVocab = {
  /**
   * A deterministic vocabulary of exactly `size` tokens: `<unk>`, `<s>`, `</s>`, `<|im_start|>`, `<|im_end|>`,
   * the 256 byte tokens, then multi-character pieces scored by rank (Zipf-like log-frequencies).
   */
  make: (size: number): SyntheticVocab => {
    if (!Number.isInteger(size) || size < minimumVocabSize) {
      throw new Error(`vocabulary size must be an integer >= ${minimumVocabSize}, got ${size}`)
    }
    const tokens: Array<string> = []
    const types: Array<number> = []
    for (const special of specialTokens) {
      tokens.push(special.text)
      types.push(special.type)
    }
    for (let byte = 0; byte < 256; byte++) {
      tokens.push(byteTokenText(byte))
      types.push(TokenType.byte)
    }
    const firstPieceId = tokens.length
    const pieces = new PieceList(size - firstPieceId)
    fillPieces(pieces)
    for (const piece of pieces.pieces) {
      tokens.push(piece)
      types.push(TokenType.normal)
    }

    const scores = new Float32Array(size)
    for (let id = firstPieceId; id < size; id++) scores[id] = -Math.log1p(id - firstPieceId)

    return {
      tokens,
      scores,
      tokenTypes: Int32Array.from(types),
      unknownTokenId: 0,
      bosTokenId: 1,
      eosTokenId: 2,
      imStartTokenId: 3,
      imEndTokenId: 4
    }
  }
}
