import { Args, Command, Options } from "@effect/cli"
import { Clock, Console, Effect, Option } from "effect"
import { defaultOverlapMs, keyJson, keyStatus } from "../identity/KeyJson.js"
import type { KeyInfo } from "../identity/KeyStore.js"
import { KeyStore } from "../identity/KeyStore.js"
import { storeOption, durationOption, jsonOption, limitOptions, limitsOf, printJson, tenantOption, withKeyStore } from "./IdentityOptions.js"

const keyIdArg = Args.text({ name: "ID" }).pipe(Args.withDescription("The key's id (key_…), as `weft keys list` shows it"))


const when = (ms: number | undefined) => (ms === undefined ? "-" : new Date(ms).toISOString())

const keyLine = (key: KeyInfo, now: number) =>
  [key.id, key.name, key.tenant, key.scopes.join("+"), keyStatus(key, now), `expires ${when(key.expiresAt)}`, `last used ${when(key.lastUsedAt)}`]
    .join("  ")

const createCommand = Command.make(
  "create",
  {
    name: Options.text("name").pipe(Options.withDescription("What the key is for")),
    tenant: tenantOption("tenant").pipe(Options.withDescription("The tenant the key belongs to: its isolation boundary")),
    scope: Options.choice("scope", ["inference", "admin"]).pipe(
      Options.repeated,
      Options.withDescription("What the key may do (repeatable; default inference). admin does not imply inference")
    ),
    expires: durationOption("expires").pipe(Options.withDescription("Expires after this long, e.g. 30d or 12h (default never)"), Options.optional),
    ...limitOptions,
    json: jsonOption,
    store: storeOption
  },
  (options) =>
    withKeyStore(
      options.store,
      Effect.gen(function*() {
        const store = yield* KeyStore
        const created = yield* store.create({
          name: options.name,
          tenant: options.tenant,
          scopes: options.scope.length === 0 ? ["inference"] : options.scope,
          expiresInMs: Option.getOrUndefined(options.expires),
          limits: limitsOf(options)
        })
        if (options.json) return yield* printJson({ ...keyJson(created, created.createdAt), key: created.key })
        yield* Console.log(created.key)
        yield* Console.error(`weft: created ${created.id} for tenant ${created.tenant}; the key is shown only this once.`)
      })
    )
).pipe(Command.withDescription("Create an API key and print it (once)"))

const listCommand = Command.make("list", { json: jsonOption, store: storeOption }, (options) =>
  withKeyStore(
    options.store,
    Effect.gen(function*() {
      const keys = yield* Effect.flatMap(KeyStore, (store) => store.list())
      const now = yield* Clock.currentTimeMillis
      if (options.json) return yield* printJson({ object: "list", data: keys.map((key) => keyJson(key, now)) })
      yield* Effect.forEach(keys, (key) => Console.log(keyLine(key, now)), { discard: true })
    })
  )).pipe(Command.withDescription("List the API keys (never the keys themselves)"))

const revokeCommand = Command.make("revoke", { id: keyIdArg, json: jsonOption, store: storeOption }, (options) =>
  withKeyStore(
    options.store,
    Effect.gen(function*() {
      const revoked = yield* Effect.flatMap(KeyStore, (store) => store.revoke(options.id))
      if (options.json) return yield* printJson(keyJson(revoked, yield* Clock.currentTimeMillis))
      yield* Console.log(`weft: revoked ${revoked.id}; a running server refuses it from its next request on.`)
    })
  )).pipe(Command.withDescription("Revoke an API key at once"))

const rotateCommand = Command.make(
  "rotate",
  {
    id: keyIdArg,
    overlap: durationOption("overlap").pipe(
      Options.withDescription("How long the old key keeps working, e.g. 1h or 0 (default 1h)"),
      Options.withDefault(defaultOverlapMs)
    ),
    json: jsonOption,
    store: storeOption
  },
  (options) =>
    withKeyStore(
      options.store,
      Effect.gen(function*() {
        const { created, previous } = yield* Effect.flatMap(KeyStore, (store) => store.rotate(options.id, options.overlap))
        const now = yield* Clock.currentTimeMillis
        if (options.json) return yield* printJson({ ...keyJson(created, now), key: created.key, previous: keyJson(previous, now) })
        yield* Console.log(created.key)
        yield* Console.error(`weft: ${created.id} replaces ${previous.id}, which works until ${when(previous.expiresAt)}; the key is shown only this once.`)
      })
    )
).pipe(Command.withDescription("Replace an API key with a new one; the old one keeps working for --overlap"))

/** `weft keys …`: API keys in the data dir's keys database, which a running server reads on every request. */
export const keysCommand = Command.make("keys").pipe(
  Command.withDescription("Manage API keys"),
  Command.withSubcommands([createCommand, listCommand, revokeCommand, rotateCommand])
)
