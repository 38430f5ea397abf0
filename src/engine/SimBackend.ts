import { Duration, Effect, Layer } from "effect"
import { Backend, DecodeFailed, KvEraseFailed } from "./Backend.js"
import type { BackendShape, ChatMessage, Generation, StepResult } from "./Backend.js"
import { l2Normalized } from "./L2Normalized.js"
import type { SamplingOptions } from "./SamplingOptions.js"
import { stepLogprobs } from "./StepLogprobs.js"
import { hermesToolCallSyntax } from "./ToolCallSyntax.js"

/** What the simulated engine does for one prompt: when it ends, and where it fails. */
export interface SimScript {
  /** Emit end-of-generation as the n-th generated token (0-based), unless `ignoreEos`. */
  readonly eosAt?: number | undefined
  readonly failAtPrefill?: boolean | undefined
  /** Fail the decode step that would produce the n-th generated token (n ≥ 1). */
  readonly failAtToken?: number | undefined
  /** The next `failEraseTimes` erases of this request's slot fail before one succeeds. */
  readonly failEraseTimes?: number | undefined
  /** Generate exactly this text, one byte a token, then end (instead of cycling through the built-in text). */
  readonly text?: string | undefined
}

export interface SimBackendConfig {
  /** The model id it reports; `sim` by default. */
  readonly id?: string | undefined
  readonly parallel: number
  readonly contextSize: number
  /** Time one decode step takes, read from `Clock` (so `TestClock` drives it). */
  readonly tokenLatency: Duration.DurationInput
  /** Prefill time per prompt token. */
  readonly prefillLatencyPerToken?: Duration.DurationInput | undefined
  /** Chooses the behaviour for a prompt, given every token the slot holds once the prompt is in (tests encode a
   * request's script in its prompt tokens). */
  readonly script?: ((prompt: ReadonlyArray<number>) => SimScript) | undefined
}

/** Token ids: 0–255 are raw bytes, then BOS and EOS. */
export const SimTokens = { bos: 256, eos: 257, vocabSize: 258 } as const

/** Length of the simulator's embeddings. */
export const simEmbeddingSize = 16

/** Generated text cycles through this, so multi-byte characters arrive split across tokens. */
const outputText = new TextEncoder().encode("héllo wörld, 日本語 says ✓ to the € and 🙂. ")

const utf8 = new TextDecoder("utf-8", { fatal: false })

const promptHash = (prompt: ReadonlyArray<number>): number => {
  let hash = 2166136261
  for (const token of prompt) hash = Math.imul(hash ^ token, 16777619)
  return hash >>> 0
}

/** One rendered turn: its role and content, then any calls it made (Hermes-style) or the call it answers. */
const simTurn = (message: ChatMessage): string => {
  const calls = (message.toolCalls ?? []).map((call) =>
    `${hermesToolCallSyntax.callPrefix}${call.name}${hermesToolCallSyntax.paramsPrefix}${call.arguments}${hermesToolCallSyntax.callSuffix}`
  )
  const answers = message.toolCallId === undefined ? "" : `<for ${message.toolCallId}>`
  return `<${message.role}>${answers}${message.content}${calls.join(hermesToolCallSyntax.betweenCalls)}\n`
}

/** A unit vector determined by `tokens`: pseudo-random components seeded by their hash (mulberry32). */
const simEmbedding = (tokens: ReadonlyArray<number>): Float32Array => {
  let state = promptHash(tokens) | 0
  const components = Array.from({ length: simEmbeddingSize }, () => {
    state = (state + 0x6d2b79f5) | 0
    let mixed = Math.imul(state ^ (state >>> 15), state | 1)
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61)
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 2 ** 32 - 0.5
  })
  return l2Normalized(components)
}

/** A made-up distribution for a step that sampled `token`: it has half the mass, the next byte values halve the rest. */
const simProbabilities = (token: number): ReadonlyMap<number, number> =>
  new Map(Array.from({ length: 20 }, (_, i) => [(token + i) % 256, 2 ** -(i + 1)] as const))

/**
 * A deterministic in-memory engine: byte-level tokens, latency from `Clock`, scripted end and failures. An adapter
 * (`adapters.open`) is a fresh set of slots whose output starts elsewhere in the text, by a hash of the adapter's file
 * name and scale.
 */
export const makeSimBackend = (config: SimBackendConfig, adapterSalt = 0): BackendShape => {
  const held: Array<Array<number>> = Array.from({ length: config.parallel }, () => [])
  const pendingEraseFailures = Array.from({ length: config.parallel }, () => 0)
  const tokenLatency = Duration.decode(config.tokenLatency)
  const prefillPerToken = Duration.decode(config.prefillLatencyPerToken ?? 0)

  const occupy = (slot: number, tokens: ReadonlyArray<number>) => {
    held[slot]!.push(...tokens)
    if (held[slot]!.length > config.contextSize) {
      throw new Error(`SimBackend: slot ${slot} overflowed its context (${held[slot]!.length} > ${config.contextSize})`)
    }
  }

  const start = (slot: number, prompt: ReadonlyArray<number>, sampling: SamplingOptions) =>
    Effect.sync((): Generation => {
      const fullPrompt = [...held[slot]!, ...prompt]
      const script = config.script?.(fullPrompt) ?? {}
      pendingEraseFailures[slot] = script.failEraseTimes ?? 0
      let offset = (promptHash(fullPrompt) + sampling.seed + adapterSalt) % outputText.length
      // Start on a character boundary, so the generated bytes are always valid UTF-8.
      while ((outputText[offset]! & 0xc0) === 0x80) offset = (offset + 1) % outputText.length
      let generated = 0
      let pending: ReadonlyArray<number> = prompt
      const scripted = script.text === undefined ? undefined : new TextEncoder().encode(script.text)
      const endAt = scripted === undefined ? script.eosAt : Math.min(script.eosAt ?? scripted.length, scripted.length)

      const step = Effect.gen(function*() {
        const isPrefill = generated === 0
        yield* Effect.sleep(isPrefill ? Duration.sum(Duration.times(prefillPerToken, prompt.length), tokenLatency) : tokenLatency)
        if (isPrefill && script.failAtPrefill) {
          occupy(slot, pending.slice(0, Math.ceil(pending.length / 2)))
          return yield* new DecodeFailed({ slot, stage: "prefill", message: "injected prefill failure" })
        }
        occupy(slot, pending)
        if (!isPrefill && script.failAtToken === generated) {
          return yield* new DecodeFailed({ slot, stage: "decode", message: `injected failure at token ${generated}` })
        }
        if (endAt === generated && !sampling.ignoreEos) {
          return { _tag: "EndOfGeneration", token: SimTokens.eos, cells: held[slot]!.length } satisfies StepResult
        }
        const token = scripted === undefined
          ? outputText[(offset + generated) % outputText.length]!
          : scripted[generated % scripted.length]!
        generated += 1
        pending = [token]
        const logprobs = sampling.logprobs === undefined ? undefined : stepLogprobs(simProbabilities(token), token, sampling.logprobs)
        return { _tag: "Token", token, cells: held[slot]!.length, logprobs } satisfies StepResult
      })
      return { next: Effect.uninterruptible(step) }
    })

  const eraseFrom = (slot: number, keep: number) =>
    Effect.suspend(() => {
      if (pendingEraseFailures[slot]! > 0) {
        pendingEraseFailures[slot] -= 1
        return new KvEraseFailed({ slot, message: "injected erase failure" })
      }
      held[slot]!.splice(keep)
      return Effect.void
    })

  return {
    info: {
      id: config.id ?? "sim",
      parallel: config.parallel,
      contextSize: config.contextSize,
      trainContextSize: config.contextSize,
      vocabSize: SimTokens.vocabSize,
      kvBytesPerToken: 1024,
      bosToken: SimTokens.bos,
      addBosToken: true,
      embeddingSize: simEmbeddingSize,
      maxEmbeddingTokens: config.contextSize
    },
    tokenize: (text) => Effect.sync(() => Array.from(new TextEncoder().encode(text))),
    renderChat: (messages, tools) =>
      Effect.sync(() => {
        const offered = tools === undefined ? "" : `<tools>${JSON.stringify(tools)}</tools>\n`
        const text = offered + messages.map(simTurn).join("") + "<assistant>"
        return [SimTokens.bos, ...new TextEncoder().encode(text)]
      }),
    toolCallSyntax: hermesToolCallSyntax,
    // The simulator samples without grammars: every constraint is accepted.
    checkGrammar: () => Effect.void,
    detokenize: (tokens) => utf8.decode(Uint8Array.from(tokens.filter((token) => token < 256))),
    start,
    erase: (slot) => eraseFrom(slot, 0),
    trim: eraseFrom,
    copyPrefix: (from, to, length) =>
      Effect.sync(() => {
        const source = held[from]!
        held[to] = source.length >= length ? source.slice(0, length) : []
        return source.length >= length
      }),
    cells: (slot) => held[slot]!.length,
    tokensOf: (slot) => held[slot]!.slice(),
    // Embedding takes the prefill latency of its tokens, from `Clock`, like a prompt would.
    embed: (inputs) =>
      Effect.as(
        Effect.sleep(Duration.times(prefillPerToken, inputs.reduce((sum, tokens) => sum + tokens.length, 0))),
        inputs.map(simEmbedding)
      ),
    adapters: adapterSalt === 0
      ? {
        check: () => Effect.void,
        // By the file's name, not its path: tests keep adapters in random temporary folders, and a salt from the path
        // made two adapters' texts collide in about one run in sixty (a flaky test).
        open: (adapter) =>
          Effect.sync(() => makeSimBackend(config, 1 + (promptHash(Array.from(new TextEncoder().encode(`${adapter.path.split(/[\\/]/).at(-1)}:${adapter.scale}`))) % (outputText.length - 1))))
      }
      : undefined
  }
}

/** `Backend` backed by the simulator. */
export const SimBackend = {
  layer: (config: SimBackendConfig): Layer.Layer<Backend> => Layer.sync(Backend, () => makeSimBackend(config))
}
