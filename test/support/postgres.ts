// A throwaway Postgres server per test file: initdb into a temporary folder, start `postgres` on a free loopback port,
// and remove it all afterwards. It uses Debian's `postgresql` package (`.ci/run` installs it). Postgres refuses to run
// as root, so as root the server runs as the `postgres` user the package creates.
import { execFileSync, spawn, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { freePort } from "./replicas.js"

export interface TestPostgres {
  /** `postgres://weft@127.0.0.1:PORT/weft`, trust authentication. */
  readonly url: string
  readonly port: number
  /** A fresh database on the same server, for a test that needs its own. */
  readonly createDatabase: (name: string) => string
  /** The postmaster's process id. */
  readonly pid: number
  readonly stop: () => Promise<void>
}

const binDirectory = (): string | undefined => {
  const root = "/usr/lib/postgresql"
  if (!fs.existsSync(root)) return undefined
  const versions = fs.readdirSync(root).filter((entry) => fs.existsSync(path.join(root, entry, "bin", "postgres")))
  versions.sort((a, b) => Number(b) - Number(a))
  return versions.length > 0 ? path.join(root, versions[0]!, "bin") : undefined
}

/** Whether this machine can run the Postgres tests (CI always can: `.ci/run` installs the package). */
export const postgresAvailable = (): boolean => binDirectory() !== undefined

const asRoot = typeof process.getuid === "function" && process.getuid() === 0

/** `cmd args` as the postgres user when we are root, as ourselves otherwise. */
const command = (binary: string, args: ReadonlyArray<string>): [string, Array<string>] =>
  asRoot ? ["runuser", ["-u", "postgres", "--", binary, ...args]] : [binary, [...args]]

const waitReady = async (bin: string, port: number, socketDir: string, child: ChildProcess, log: () => string) => {
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`postgres exited with ${child.exitCode}:\n${log()}`)
    try {
      execFileSync(path.join(bin, "pg_isready"), ["-h", socketDir, "-p", String(port), "-q"], { stdio: "ignore" })
      return
    } catch {
      if (Date.now() > deadline) throw new Error(`postgres did not become ready in 60 s:\n${log()}`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}

export const startPostgres = async (): Promise<TestPostgres> => {
  const bin = binDirectory()
  if (bin === undefined) throw new Error("Postgres is not installed: apt-get install postgresql (.ci/run does this)")
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "weft-pg-"))
  const dataDir = path.join(root, "data")
  fs.mkdirSync(dataDir, { mode: 0o700 })
  if (asRoot) execFileSync("chown", ["-R", "postgres:postgres", root])
  fs.chmodSync(root, 0o755)
  const [initdb, initArgs] = command(path.join(bin, "initdb"), ["-D", dataDir, "-A", "trust", "-U", "weft", "-E", "UTF8", "--no-sync"])
  execFileSync(initdb, initArgs, { stdio: "pipe" })
  const port = await freePort()
  const [postgres, args] = command(path.join(bin, "postgres"), [
    "-D", dataDir, "-p", String(port), "-k", root, "-c", "listen_addresses=127.0.0.1",
    "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"
  ])
  const child = spawn(postgres, args, { stdio: ["ignore", "pipe", "pipe"] })
  let output = ""
  child.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()))
  child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()))
  await waitReady(bin, port, root, child, () => output)
  // The postmaster's process id is the first line of its lock file.
  const postmaster = Number(fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")[0])
  const psql = (sql: string, database = "postgres") =>
    execFileSync(path.join(bin, "psql"), ["-h", root, "-p", String(port), "-U", "weft", "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], { stdio: "pipe" })
  psql("CREATE DATABASE weft")
  const urlOf = (database: string) => `postgres://weft@127.0.0.1:${port}/${database}`
  return {
    url: urlOf("weft"),
    port,
    pid: postmaster,
    createDatabase: (name) => {
      psql(`CREATE DATABASE "${name}"`)
      return urlOf(name)
    },
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve))
        // SIGINT is Postgres's fast shutdown. As root the child is `runuser`, which does not pass it on (the stop took
        // its whole 10 s, then left the server running without its folder): the postmaster itself is signalled.
        if (asRoot) process.kill(postmaster, "SIGINT")
        else child.kill("SIGINT")
        let timer: NodeJS.Timeout | undefined
        await Promise.race([exited, new Promise((resolve) => (timer = setTimeout(resolve, 10_000)))])
        clearTimeout(timer)
        if (child.exitCode === null) child.kill("SIGKILL")
      }
      fs.rmSync(root, { recursive: true, force: true })
    }
  }
}
