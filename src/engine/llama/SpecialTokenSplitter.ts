/** A token matched by its text in a raw prompt, with llama.cpp's whitespace-stripping attributes. */
export interface SpecialTokenText {
  readonly token: number
  readonly text: string
  /** Whitespace before the token's text is dropped (llama.cpp's `LSTRIP`). */
  readonly lstrip: boolean
  /** Whitespace after the token's text is dropped (llama.cpp's `RSTRIP`). */
  readonly rstrip: boolean
  /** llama.cpp matches it even when special tokens are not parsed (a user-defined token). */
  readonly alwaysParsed: boolean
}

/** A raw prompt cut at its special-token texts: plain text pieces and token ids, in order. */
export type PromptPiece = string | number

interface TrieNode {
  readonly next: Map<number, TrieNode>
  match: SpecialTokenText | undefined
}

const isSpace = (code: number) => code === 32 || (code >= 9 && code <= 13)

/**
 * Splits text at every occurrence of a special token's text, leftmost and longest first, in time linear in the text
 * (times the longest special text). llama.cpp's own partitioning (`tokenizer_st_partition`) rescans the text once
 * per special token and was seen running for minutes on 2^20 × `<s>`; this gives the same pieces for vocabularies
 * whose special texts do not overlap one another (llama.cpp takes longer texts first across the whole text, this
 * takes the leftmost: they differ only where one special text ends inside another).
 */
export const makeSpecialTokenSplitter = (specials: ReadonlyArray<SpecialTokenText>) => {
  const root: TrieNode = { next: new Map(), match: undefined }
  for (const special of specials) {
    if (special.text.length === 0) continue
    let node = root
    for (let index = 0; index < special.text.length; index++) {
      const code = special.text.charCodeAt(index)
      let child = node.next.get(code)
      if (child === undefined) {
        child = { next: new Map(), match: undefined }
        node.next.set(code, child)
      }
      node = child
    }
    node.match ??= special
  }

  return (text: string): Array<PromptPiece> => {
    const pieces: Array<PromptPiece> = []
    // Start of the plain text not yet emitted.
    let plainStart = 0
    let index = 0
    while (index < text.length) {
      let node: TrieNode | undefined = root
      let found: SpecialTokenText | undefined
      let foundEnd = index
      for (let cursor = index; cursor < text.length; cursor++) {
        node = node.next.get(text.charCodeAt(cursor))
        if (node === undefined) break
        if (node.match !== undefined) {
          found = node.match
          foundEnd = cursor + 1
        }
      }
      if (found === undefined) {
        index++
        continue
      }
      let plainEnd = index
      if (found.lstrip) while (plainEnd > plainStart && isSpace(text.charCodeAt(plainEnd - 1))) plainEnd--
      if (plainEnd > plainStart) pieces.push(text.slice(plainStart, plainEnd))
      pieces.push(found.token)
      index = foundEnd
      if (found.rstrip) while (index < text.length && isSpace(text.charCodeAt(index))) index++
      plainStart = index
    }
    if (plainStart < text.length) pieces.push(text.slice(plainStart))
    return pieces
  }
}
