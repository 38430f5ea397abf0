import { Options } from "@effect/cli"
import { Console, Effect, Layer, Option, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { KeyDuration, TenantName } from "../identity/KeyJson.js"
import { keysDatabasePath, KeyStore } from "../identity/KeyStore.js"
import type { UsageLimits } from "../identity/Principal.js"
import { isPostgresUrl } from "../storage/postgresClient.js"

/**
 * Where the keys and tenants are: `--cluster`'s Postgres database, as a clustered `weft serve` shares them, else
 * `keys.sqlite` in `--data-dir`, as `weft serve` keeps them on one machine.
 */
export const storeOption = Options.all({
  dataDir: Options.text("data-dir").pipe(
    Options.withPseudoName("DIR"),
    Options.withDefault(".weft"),
    Options.withDescription("The data dir of the server (the keys database is keys.sqlite in it). Default ./.weft")
  ),
  cluster: Options.text("cluster").pipe(
    Options.withPseudoName("POSTGRES_URL"),
    Options.optional,
    Options.withDescription("The database of a cluster's replicas (`weft serve --cluster`): keys and tenants are kept there")
  )
}).pipe(Options.map(({ cluster, dataDir }) => Option.getOrElse(cluster, () => keysDatabasePath(dataDir))))

/** One JSON object on a line of its own, for `--json`. */
export const printJson = (value: unknown) => Console.log(JSON.stringify(value))

export const jsonOption = Options.boolean("json").pipe(Options.withDescription("Print one JSON object instead of text"))

export const tenantOption = (name: string) =>
  Options.text(name).pipe(Options.withPseudoName("TENANT"), Options.withSchema(TenantName))

export const durationOption = (name: string) => Options.text(name).pipe(Options.withPseudoName("DURATION"), Options.withSchema(KeyDuration))

const limitOption = (name: string, description: string) =>
  Options.integer(name).pipe(Options.withSchema(Schema.Int.pipe(Schema.positive())), Options.withDescription(description), Options.optional)

/** `--rpm`, `--tpm`, `--max-concurrent`. */
export const limitOptions = {
  rpm: limitOption("rpm", "Requests per minute"),
  tpm: limitOption("tpm", "Tokens (prompt + completion) per minute"),
  maxConcurrent: limitOption("max-concurrent", "Requests running or queued at once")
}

/** The limits the options name (absent ones are no limit). */
export const limitsOf = (options: { readonly [K in keyof typeof limitOptions]: Option.Option<number> }): UsageLimits => ({
  rpm: Option.getOrUndefined(options.rpm),
  tpm: Option.getOrUndefined(options.tpm),
  maxConcurrent: Option.getOrUndefined(options.maxConcurrent)
})

/** Runs `effect` against the keys database of `dataDir` (created if missing), the one a server on that dir reads. */
export const withKeyStore = <A, E>(location: string, effect: Effect.Effect<A, E, KeyStore>) =>
  Effect.suspend(() => {
    if (!isPostgresUrl(location)) fs.mkdirSync(path.dirname(location), { recursive: true })
    return Effect.provide(effect, Layer.orDie(KeyStore.layer(location)))
  })
