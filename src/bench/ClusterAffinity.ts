import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Console, Effect, Schema } from "effect"
import type { ChatMessage } from "../engine/Backend.js"
import { freePort, spawnWeft } from "./SpawnedServer.js"
import type { EngineBenchConfig } from "./InProcessTarget.js"

/** The cluster-affinity scenario: one conversation over `replicas` replicas, each turn entering through the next one. */
export interface ClusterAffinitySettings {
  readonly clusterUrl: string
  readonly replicas: number
  readonly turns: number
  /** The system prompt is one sentence (about 12 tokens) repeated this often. */
  readonly systemRepeat: number
}

/** One turn: its prompt, and the prompt tokens the serving replica evaluated (the rest came from its prefix cache). */
export interface AffinityTurn {
  readonly turn: number
  readonly promptTokens: number
  readonly evaluated: number
}

/** The bench could not talk to a replica. */
export class AffinityRequestFailed extends Schema.TaggedError<AffinityRequestFailed>()("AffinityRequestFailed", { message: Schema.String }) {}

const Usage = Schema.Struct({
  usage: Schema.Struct({ prompt_tokens: Schema.Number, prompt_tokens_details: Schema.Struct({ cached_tokens: Schema.Number }) }),
  choices: Schema.Array(Schema.Struct({ message: Schema.Struct({ content: Schema.String }) }))
})

const completionTokens = 24

const post = (url: string, body: unknown) =>
  Effect.tryPromise({
    try: async () => {
      const response = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
      if (response.status !== 200) throw new Error(`${response.status} ${await response.text()}`)
      return (await response.json()) as unknown
    },
    catch: (error) => new AffinityRequestFailed({ message: String(error) })
  }).pipe(Effect.flatMap(Schema.decodeUnknown(Usage)), Effect.mapError((error) => new AffinityRequestFailed({ message: error.message })))

/**
 * One conversation over `urls`, turn `t` entering through replica `t mod n`. With `sessionId` the servers keep the
 * history (and the cluster sends each turn to the session's owner); without it the client sends the whole conversation
 * each turn, as behind a plain round-robin balancer.
 */
const converse = (urls: ReadonlyArray<string>, settings: ClusterAffinitySettings, sessionId: string | undefined) =>
  Effect.gen(function*() {
    const messages: Array<ChatMessage> = [
      { role: "system", content: "You are a helpful assistant who answers questions about the weather. ".repeat(settings.systemRepeat) }
    ]
    const turns: Array<AffinityTurn> = []
    for (let turn = 1; turn <= settings.turns; turn++) {
      const question: ChatMessage = { role: "user", content: `Turn ${turn}: what will the weather be like tomorrow in city number ${turn}?` }
      const sent = sessionId === undefined || turn === 1 ? [...messages, question] : [question]
      const reply = yield* post(urls[(turn - 1) % urls.length]!, {
        model: "bench",
        messages: sent,
        max_tokens: completionTokens,
        temperature: 0,
        ...(sessionId === undefined ? {} : { session_id: sessionId })
      })
      messages.push(question, { role: "assistant", content: reply.choices[0]?.message.content ?? "" })
      turns.push({ turn, promptTokens: reply.usage.prompt_tokens, evaluated: reply.usage.prompt_tokens - reply.usage.prompt_tokens_details.cached_tokens })
    }
    return turns
  })

/** `replicas` fresh `weft serve` processes, each with its own data dir; clustered on `clusterUrl` when given. */
const spawnReplicas = (engine: EngineBenchConfig, count: number, clusterUrl: string | undefined) =>
  Effect.forEach(Array.from({ length: count }, (_, index) => index), (index) => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `weft-affinity-${index}-`))
    return Effect.gen(function*() {
      const cluster = clusterUrl === undefined ? [] : ["--cluster", clusterUrl, "--cluster-port", String(yield* freePort)]
      const server = yield* spawnWeft(engine, ["--data-dir", dataDir, "--model-id", "bench", ...cluster])
      return server.baseUrl
    })
  })

/** Per-turn evaluated prompt tokens over `replicas` replicas: plain round-robin versus the cluster's session affinity. */
export const runClusterAffinity = (engine: EngineBenchConfig, settings: ClusterAffinitySettings) =>
  Effect.gen(function*() {
    const roundRobin = yield* Effect.scoped(Effect.flatMap(spawnReplicas(engine, settings.replicas, undefined), (urls) => converse(urls, settings, undefined)))
    // The cluster's runners need a moment to see each other and split the shards.
    const affinity = yield* Effect.scoped(
      Effect.flatMap(spawnReplicas(engine, settings.replicas, settings.clusterUrl), (urls) =>
        Effect.zipRight(Effect.sleep("5 seconds"), converse(urls, settings, `affinity-${Date.now()}`)))
    )
    const total = (rows: ReadonlyArray<AffinityTurn>) => rows.reduce((sum, row) => sum + row.evaluated, 0)
    const table = [
      `| turn | prompt tokens | evaluated, round-robin over ${settings.replicas} | evaluated, session affinity over ${settings.replicas} |`,
      "|---:|---:|---:|---:|",
      ...affinity.map((row, index) => `| ${row.turn} | ${row.promptTokens} | ${roundRobin[index]?.evaluated ?? ""} | ${row.evaluated} |`),
      `| total | | ${total(roundRobin)} | ${total(affinity)} |`
    ].join("\n")
    yield* Console.log(table)
    return { roundRobin, affinity, table } as const
  })
