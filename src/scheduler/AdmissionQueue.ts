import type { Priority } from "./GenerationRequest.js"

const classRank: Record<Priority, number> = { high: 2, normal: 1, low: 0 }

/** A request waiting for its turn at a slot. */
export interface WaitingEntry {
  readonly id: string
  readonly priority: Priority
  readonly enqueuedAt: number
  readonly sequence: number
  readonly grantTurn: () => void
}

/**
 * Priority classes, FIFO within a class, with aging: every `agingMs` of waiting counts as one class higher,
 * so a low-priority request is eventually served even under a steady stream of high ones.
 */
export class AdmissionQueue {
  private readonly waiting: Array<WaitingEntry> = []
  private nextSequence = 0

  constructor(private readonly agingMs: number) {}

  get length(): number {
    return this.waiting.length
  }

  entries(): ReadonlyArray<WaitingEntry> {
    return this.waiting
  }

  add(entry: Omit<WaitingEntry, "sequence">): void {
    this.waiting.push({ ...entry, sequence: this.nextSequence++ })
  }

  remove(id: string): boolean {
    const index = this.waiting.findIndex((entry) => entry.id === id)
    if (index === -1) return false
    this.waiting.splice(index, 1)
    return true
  }

  /** Removes and returns the entry to serve next at time `now`. */
  takeNext(now: number): WaitingEntry | undefined {
    let best = -1
    let bestScore = -Infinity
    for (let index = 0; index < this.waiting.length; index++) {
      const entry = this.waiting[index]!
      const score = classRank[entry.priority] + (now - entry.enqueuedAt) / this.agingMs
      if (score > bestScore || (score === bestScore && entry.sequence < this.waiting[best]!.sequence)) {
        best = index
        bestScore = score
      }
    }
    return best === -1 ? undefined : this.waiting.splice(best, 1)[0]
  }
}
