import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Option } from "effect"
import { tenantJson, TenantName } from "../identity/KeyJson.js"
import { KeyStore, priorities } from "../identity/KeyStore.js"
import { storeOption, jsonOption, limitOptions, limitsOf, printJson, withKeyStore } from "./IdentityOptions.js"

const limitText = (value: number | undefined) => (value === undefined ? "-" : String(value))

const setCommand = Command.make(
  "set",
  {
    tenant: Args.text({ name: "TENANT" }).pipe(Args.withSchema(TenantName)),
    ...limitOptions,
    priority: Options.choice("priority", priorities).pipe(
      Options.withDescription("Priority class of the tenant's requests that name none"),
      Options.optional
    ),
    json: jsonOption,
    store: storeOption
  },
  (options) =>
    withKeyStore(
      options.store,
      Effect.gen(function*() {
        const tenant = yield* Effect.flatMap(KeyStore, (store) =>
          store.setTenant(options.tenant, { priority: Option.getOrUndefined(options.priority), limits: limitsOf(options) }))
        if (options.json) return yield* printJson(tenantJson(tenant))
        yield* Console.log(`weft: tenant ${tenant.name} set`)
      })
    )
).pipe(Command.withDescription("Set a tenant's limits and default priority (options left out keep their value)"))

const listCommand = Command.make("list", { json: jsonOption, store: storeOption }, (options) =>
  withKeyStore(
    options.store,
    Effect.gen(function*() {
      const tenants = yield* Effect.flatMap(KeyStore, (store) => store.listTenants())
      if (options.json) return yield* printJson({ object: "list", data: tenants.map(tenantJson) })
      yield* Effect.forEach(
        tenants,
        (tenant) =>
          Console.log(
            `${tenant.name}  priority ${tenant.priority ?? "-"}  rpm ${limitText(tenant.limits.rpm)}  tpm ${limitText(tenant.limits.tpm)}  ` +
              `max-concurrent ${limitText(tenant.limits.maxConcurrent)}`
          ),
        { discard: true }
      )
    })
  )).pipe(Command.withDescription("List the tenants with settings"))

/** `weft tenants …`: per-tenant limits and default priority. */
export const tenantsCommand = Command.make("tenants").pipe(
  Command.withDescription("Manage tenants"),
  Command.withSubcommands([setCommand, listCommand])
)
