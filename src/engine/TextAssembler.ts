/** Renders tokens to text; `context` is what precedes them (for leading-space rules). */
export type Detokenize = (tokens: ReadonlyArray<number>, context?: ReadonlyArray<number>) => string

/** How many already-emitted tokens are re-rendered with each new one, so merges across tokens render right. */
const contextWindow = 6

/**
 * Turns generated tokens into text deltas that never split a multi-byte UTF-8 character:
 * re-renders a short window and emits only once the text no longer ends in a replacement character.
 */
export class IncrementalDetokenizer {
  private readonly tokens: Array<number> = []
  private prefixOffset = 0
  private readOffset = 0

  constructor(
    private readonly detokenize: Detokenize,
    private readonly leadingContext: ReadonlyArray<number> = []
  ) {}

  private render(from: number, to: number): string {
    const context = from === 0 ? this.leadingContext : this.tokens.slice(Math.max(0, from - contextWindow), from)
    return this.detokenize(this.tokens.slice(from, to), context)
  }

  /** Adds a token; returns the text that became final (possibly empty). */
  push(token: number): string {
    this.tokens.push(token)
    const prefixText = this.render(this.prefixOffset, this.readOffset)
    const fullText = this.render(this.prefixOffset, this.tokens.length)
    if (fullText.length <= prefixText.length || fullText.endsWith("\uFFFD")) return ""
    this.prefixOffset = this.readOffset
    this.readOffset = this.tokens.length
    return fullText.slice(prefixText.length)
  }

  /** The text still held back; a character left incomplete when generation stopped is dropped, never emitted as U+FFFD. */
  flush(): string {
    const prefixText = this.render(this.prefixOffset, this.readOffset)
    const fullText = this.render(this.prefixOffset, this.tokens.length)
    this.prefixOffset = this.readOffset = this.tokens.length
    return fullText.slice(prefixText.length).replace(/\uFFFD+$/u, "")
  }
}

/**
 * Finds stop strings in streamed text, across delta boundaries: text that could still begin a stop string
 * is held back, and the stop string itself is never emitted.
 */
export class StopMatcher {
  private held = ""
  constructor(private readonly stops: ReadonlyArray<string>) {}

  /** Adds text; returns what may be emitted now, and whether a stop string was reached. */
  push(text: string): { readonly text: string; readonly stopped: boolean } {
    const buffer = this.held + text
    let stopAt = -1
    for (const stop of this.stops) {
      const index = buffer.indexOf(stop)
      if (index !== -1 && (stopAt === -1 || index < stopAt)) stopAt = index
    }
    if (stopAt !== -1) {
      this.held = ""
      return { text: buffer.slice(0, stopAt), stopped: true }
    }
    const holdLength = this.longestStopPrefixSuffix(buffer)
    this.held = buffer.slice(buffer.length - holdLength)
    return { text: buffer.slice(0, buffer.length - holdLength), stopped: false }
  }

  /** Releases text held back as a possible stop prefix (the generation ended without completing it). */
  flush(): string {
    const rest = this.held
    this.held = ""
    return rest
  }

  private longestStopPrefixSuffix(buffer: string): number {
    let longest = 0
    for (const stop of this.stops) {
      for (let length = Math.min(stop.length - 1, buffer.length); length > longest; length--) {
        if (buffer.endsWith(stop.slice(0, length))) {
          longest = length
          break
        }
      }
    }
    return longest
  }
}

/** Detokenizes generated tokens and applies stop strings: the text pipeline of one request. */
export class TextAssembler {
  private readonly detokenizer: IncrementalDetokenizer
  private readonly stopMatcher: StopMatcher

  constructor(detokenize: Detokenize, stops: ReadonlyArray<string>, promptTail: ReadonlyArray<number> = []) {
    this.detokenizer = new IncrementalDetokenizer(detokenize, promptTail)
    this.stopMatcher = new StopMatcher(stops.filter((stop) => stop.length > 0))
  }

  push(token: number): { readonly text: string; readonly stopped: boolean } {
    return this.stopMatcher.push(this.detokenizer.push(token))
  }

  /** Final text once generation ended for a reason other than a stop string. */
  finish(): { readonly text: string; readonly stopped: boolean } {
    const last = this.stopMatcher.push(this.detokenizer.flush())
    return last.stopped ? last : { text: last.text + this.stopMatcher.flush(), stopped: false }
  }
}
