import type { Llama, LlamaGrammar } from "node-llama-cpp"
import type { GrammarConstraint } from "../SamplingOptions.js"

/**
 * The llama.cpp grammars of one `Llama`, built once per constraint (generic JSON, or one JSON schema) and shared by
 * every generation that asks for it; a build that fails is forgotten, so the next request tries again.
 */
export class GrammarCache {
  private readonly grammars = new Map<string, Promise<LlamaGrammar>>()

  constructor(private readonly llama: Llama) {}

  /** The grammar enforcing `constraint`, built on first use. */
  grammarFor(constraint: GrammarConstraint): Promise<LlamaGrammar> {
    const key = constraint._tag === "Json" ? "json" : JSON.stringify(constraint.schema)
    let grammar = this.grammars.get(key)
    if (grammar === undefined) {
      grammar = constraint._tag === "Json"
        ? this.llama.getGrammarFor("json")
        // The JSON schema was validated by the HTTP layer; node-llama-cpp's type only narrows what it supports.
        : this.llama.createGrammarForJsonSchema(constraint.schema as never)
      this.grammars.set(key, grammar)
      grammar.catch(() => this.grammars.delete(key))
    }
    return grammar
  }
}
