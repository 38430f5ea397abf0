import { Effect, Metric } from "effect"
import type { Llama, LlamaGrammar } from "node-llama-cpp"
import { WeftMetrics } from "../../observability/WeftMetrics.js"
import { GrammarRejected } from "../Backend.js"
import type { GrammarConstraint, ToolCallsConstraint } from "../SamplingOptions.js"
import { errorMessage } from "./errorMessage.js"
import { hardenGbnf } from "./GbnfHardening.js"
import { toolCallGrammar } from "./ToolGrammar.js"
import type { FunctionGrammar } from "./ToolGrammar.js"

/** How much the cache of one model may hold; the least recently used verdict goes first past either bound. */
export interface GrammarCacheLimits {
  readonly maxEntries: number
  readonly maxBytes: number
}

export const defaultGrammarCacheLimits: GrammarCacheLimits = { maxEntries: 256, maxBytes: 64 * 1024 * 1024 }

/** A schema's verdict: the grammar llama.cpp built for it, or why it could not. */
type Verdict =
  | { readonly _tag: "Built"; readonly grammar: LlamaGrammar }
  | { readonly _tag: "Rejected"; readonly message: string; readonly cause: unknown }

interface Entry {
  readonly verdict: Verdict
  readonly bytes: number
}

/**
 * Estimated bytes an entry keeps alive: its key and grammar text as JS strings (two bytes a character) plus the native
 * copy of the grammar text llama.cpp parses from (one byte a character, ASCII in practice).
 */
const bytesOf = (key: string, verdict: Verdict) =>
  2 * key.length + (verdict._tag === "Built" ? 3 * verdict.grammar.grammar.length : 2 * verdict.message.length)

/**
 * The llama.cpp grammars of one `Llama`: the generic JSON grammar, loaded once, and one per JSON schema, keyed by the
 * schema's JSON text. Schemas come from clients, so their verdicts (a grammar, or why none could be built) are kept
 * in an LRU bounded by count and estimated bytes. Evicting only drops the cache's reference: a generation running
 * under an evicted grammar keeps it alive through its evaluation state.
 *
 * Invariant: `entries` and `bytes` are written only by `remember`, which runs without yielding, so `bytes` is
 * always the sum of the entries' bytes and both bounds hold between calls.
 */
export class GrammarCache {
  /** In recency order: a `Map` iterates in insertion order, and a hit re-inserts its key at the end. */
  private readonly entries = new Map<string, Entry>()
  private bytes = 0
  private json: Promise<LlamaGrammar> | undefined

  constructor(
    private readonly llama: Llama,
    private readonly model: string,
    private readonly limits: GrammarCacheLimits = defaultGrammarCacheLimits
  ) {}

  /** The grammar enforcing `constraint`, built on first use (or again after eviction). */
  grammarFor(constraint: GrammarConstraint): Effect.Effect<LlamaGrammar, GrammarRejected> {
    if (constraint._tag === "Json") {
      return Effect.tryPromise({
        try: () => (this.json ??= this.llama.getGrammarFor("json").then((grammar) => this.hardened(grammar))),
        catch: (error) => {
          this.json = undefined
          return new GrammarRejected({ message: errorMessage(error), cause: error })
        }
      })
    }
    const verdict = constraint._tag === "JsonSchema" ? this.schemaVerdict(constraint.schema) : this.toolCallsVerdict(constraint)
    return Effect.flatMap(verdict, (verdict) =>
      verdict._tag === "Built"
        ? Effect.succeed(verdict.grammar)
        : Effect.fail(new GrammarRejected({ message: verdict.message, cause: verdict.cause })))
  }

  private schemaVerdict(schema: unknown): Effect.Effect<Verdict> {
    // node-llama-cpp parses the grammar synchronously inside; the JSON schema was checked by `toGrammarSchema`,
    // and node-llama-cpp's type only narrows what it supports.
    return this.verdictOf(
      JSON.stringify(schema),
      () => this.llama.createGrammarForJsonSchema(schema as never).then((grammar) => this.hardened(grammar))
    )
  }

  /** Composed from the functions' own schema grammars (each cached as for `response_format`). */
  private toolCallsVerdict(constraint: ToolCallsConstraint): Effect.Effect<Verdict> {
    return Effect.flatMap(
      Effect.forEach(constraint.functions, (fn) => this.schemaVerdict(fn.schema)),
      (verdicts) => {
        const functions: Array<FunctionGrammar> = []
        for (const [index, verdict] of verdicts.entries()) {
          if (verdict._tag === "Rejected") return Effect.succeed(verdict)
          functions.push({ name: constraint.functions[index]!.name, gbnf: verdict.grammar.grammar })
        }
        // Schema keys are JSON objects, so this prefix keeps the two kinds apart.
        return this.verdictOf(
          `tools:${JSON.stringify(constraint)}`,
          () => this.llama.createGrammar({ grammar: toolCallGrammar({ ...constraint, functions }) })
        )
      }
    )
  }

  private verdictOf(key: string, build: () => Promise<LlamaGrammar>): Effect.Effect<Verdict> {
    const cached = this.entries.get(key)
    if (cached !== undefined) {
      this.entries.delete(key)
      this.entries.set(key, cached)
      return Effect.as(Metric.increment(this.tagged(WeftMetrics.grammarCacheHits)), cached.verdict)
    }
    return Effect.promise(() =>
      build().then(
        (grammar): Verdict => ({ _tag: "Built", grammar }),
        (error): Verdict => ({ _tag: "Rejected", message: errorMessage(error), cause: error })
      )
    ).pipe(
      Effect.tap((verdict) => this.remember(key, verdict)),
      Effect.tap(() => Metric.increment(this.tagged(WeftMetrics.grammarCacheMisses)))
    )
  }

  /** `grammar` with number and date rules whose output always parses and validates (see `hardenGbnf`). */
  private hardened(grammar: LlamaGrammar): Promise<LlamaGrammar> {
    return this.llama.createGrammar({
      grammar: hardenGbnf(grammar.grammar),
      stopGenerationTriggers: grammar.stopGenerationTriggers,
      trimWhitespaceSuffix: grammar.trimWhitespaceSuffix,
      rootRuleName: grammar.rootRuleName
    })
  }

  private remember(key: string, verdict: Verdict): Effect.Effect<void> {
    return Effect.suspend(() => {
      const bytes = bytesOf(key, verdict)
      const previous = this.entries.get(key)
      if (previous !== undefined) {
        this.entries.delete(key)
        this.bytes -= previous.bytes
      }
      let evicted = 0
      // One entry larger than the byte bound is still kept alone, so its own requests do not rebuild it every time.
      for (const [oldest, entry] of this.entries) {
        if (this.entries.size < this.limits.maxEntries && this.bytes + bytes <= this.limits.maxBytes) break
        this.entries.delete(oldest)
        this.bytes -= entry.bytes
        evicted += 1
      }
      this.entries.set(key, { verdict, bytes })
      this.bytes += bytes
      return Effect.all([
        Metric.set(this.tagged(WeftMetrics.grammarCacheEntries), this.entries.size),
        Metric.set(this.tagged(WeftMetrics.grammarCacheBytes), this.bytes),
        Metric.incrementBy(this.tagged(WeftMetrics.grammarCacheEvictions), evicted)
      ], { discard: true })
    })
  }

  private tagged<Type, In, Out>(metric: Metric.Metric<Type, In, Out>) {
    return Metric.tagged(metric, "model", this.model)
  }
}
