/** One queued decode as the batch planner sees it: whose it is and how many tokens it still has to evaluate. */
export interface QueuedDecode {
  readonly sequenceId: number
  readonly tokens: number
}

/** How many leading tokens of queued decode `index` go into this batch. */
export interface PlannedDecode {
  readonly index: number
  readonly amount: number
}

/**
 * Chooses what one `llama_decode` evaluates out of the queued decodes, at most `size` tokens.
 *
 * Single-token decodes (running generations) go first, so a long prompt never delays a running stream by more than
 * the part of it that fits beside them; prompt tokens fill the rest, shortest prompt first (least time to first token
 * on average). The result is ordered by sequence id: with a non-unified KV cache llama.cpp splits a batch into one
 * micro-batch per run of consecutive, increasing sequence ids, so any other order costs extra passes over the weights.
 * Every planned amount is between 1 and the decode's tokens; a decode not planned stays queued, its tokens in order.
 */
export const planBatch = (queued: ReadonlyArray<QueuedDecode>, size: number): Array<PlannedDecode> => {
  let left = Math.max(1, Math.floor(size))
  const amounts = new Map<number, number>()
  // Only a sequence's oldest queued decode is eligible: its later ones must wait until it is done, to stay in order.
  const seen = new Set<number>()
  const byLength = queued
    .map((decode, index) => ({ index, tokens: decode.tokens, sequenceId: decode.sequenceId }))
    .filter((decode) => {
      if (decode.tokens <= 0 || seen.has(decode.sequenceId)) return false
      seen.add(decode.sequenceId)
      return true
    })
    .sort((a, b) => a.tokens - b.tokens || a.sequenceId - b.sequenceId)
  for (const decode of byLength) {
    if (left === 0) break
    const amount = Math.min(decode.tokens, left)
    amounts.set(decode.index, amount)
    left -= amount
  }
  return [...amounts.entries()]
    .map(([index, amount]) => ({ index, amount }))
    .sort((a, b) => queued[a.index]!.sequenceId - queued[b.index]!.sequenceId)
}

/**
 * `planBatch` as a node-llama-cpp batch-item prioritization strategy: `items` are its batch items (each carrying the
 * `tokens` still queued), `sequenceOf` finds the sequence an item's tokens belong to (unknown ones go last).
 */
export const prioritizeBySequence = <Item extends { readonly tokens: ReadonlyArray<unknown> }>(
  items: ReadonlyArray<Item>,
  size: number,
  sequenceOf: (tokens: Item["tokens"]) => number | undefined
): Array<{ readonly item: Item; readonly processAmount: number }> =>
  planBatch(items.map((item) => ({ sequenceId: sequenceOf(item.tokens) ?? Number.MAX_SAFE_INTEGER, tokens: item.tokens.length })), size)
    .map((planned) => ({ item: items[planned.index]!, processAmount: planned.amount }))
