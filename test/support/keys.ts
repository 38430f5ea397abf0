import { Effect, ManagedRuntime } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { KeyStore, keysDatabasePath } from "../../src/identity/KeyStore.js"
import type { NewKey } from "../../src/identity/KeyStore.js"

/** A fresh data dir and its keys database, opened by the test as a second process (the CLI) would. */
export const keyStoreIn = (prefix: string) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  const databasePath = keysDatabasePath(dataDir)
  const runtime = ManagedRuntime.make(KeyStore.layerSqlite(databasePath))
  const run = <A, E>(use: (store: KeyStore) => Effect.Effect<A, E>) => runtime.runPromise(Effect.flatMap(KeyStore, use))
  return {
    dataDir,
    databasePath,
    run,
    /** Creates a key with the given scopes (default inference) and returns its id and secret. */
    create: (tenant: string, options: Partial<NewKey> = {}) =>
      run((store) => store.create({ name: `${tenant} key`, tenant, scopes: ["inference"], ...options })),
    close: () => runtime.dispose()
  }
}
