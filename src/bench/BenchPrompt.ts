/** Plain English words that the synthetic vocabularies (and most real ones) tokenize as one token each after a space. */
const words = [
  "the", "hello", "world", "weather", "and", "of", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on",
  "are", "as", "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but",
  "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she",
  "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so", "some",
  "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see",
  "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call", "who", "its", "now",
  "find", "long", "down", "day", "did", "get", "come", "made", "may", "part"
]

/** Request `index`'s completion length: uniform in `mean` ± `spread`, deterministic per index. */
export const benchCompletionTokens = (index: number, mean: number, spread: number): number => {
  if (spread === 0) return mean
  const state = (Math.imul(index + 1, 0x85ebca6b) ^ 0xc2b2ae35) >>> 0
  return mean - spread + (Math.imul(state, 1664525) + 1013904223 >>> 0) % (2 * spread + 1)
}

/**
 * The prompt text of request `index`: `length` words, different for every index from the first word on, so no
 * server can answer a request from another's cached prefix. On the synthetic models each word is one token.
 */
export const benchPromptText = (index: number, length: number): string => {
  // A small LCG per request: deterministic across runs and modes, unrelated between neighbouring indexes.
  let state = (Math.imul(index + 1, 0x9e3779b1) ^ 0x5bd1e995) >>> 0
  const picked: Array<string> = []
  for (let position = 0; position < length; position++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0
    picked.push(words[(state >>> 8) % words.length]!)
  }
  return picked.join(" ")
}
