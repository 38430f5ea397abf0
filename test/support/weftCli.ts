import { NodeContext } from "@effect/platform-node"
import { Console, Effect, Exit } from "effect"
import { execFile } from "node:child_process"
import { Console as NodeConsole } from "node:console"
import { Writable } from "node:stream"
import { promisify } from "node:util"
import { runWeft } from "../../src/cli/runWeft.js"

/** What a `weft` run printed, and its exit code as `bin/weft` would exit (0, or 1 on a failure). */
export interface WeftRun {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

const collector = (into: Array<string>) =>
  new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      into.push(chunk.toString())
      done()
    }
  })

/** An Effect `Console` writing to `node`'s console methods. */
const effectConsole = (node: globalThis.Console): Console.Console => {
  const sync = (f: () => void) => Effect.sync(f)
  return {
    [Console.TypeId]: Console.TypeId,
    assert: (condition, ...args) => sync(() => node.assert(condition, ...args)),
    clear: sync(() => node.clear()),
    count: (label) => sync(() => node.count(label)),
    countReset: (label) => sync(() => node.countReset(label)),
    debug: (...args) => sync(() => node.debug(...args)),
    dir: (item, options) => sync(() => node.dir(item, options)),
    dirxml: (...args) => sync(() => node.dirxml(...args)),
    error: (...args) => sync(() => node.error(...args)),
    group: (options) => sync(() => (options?.collapsed ? node.groupCollapsed(options.label) : node.group(options?.label))),
    groupEnd: sync(() => node.groupEnd()),
    info: (...args) => sync(() => node.info(...args)),
    log: (...args) => sync(() => node.log(...args)),
    table: (data, properties) => sync(() => node.table(data, properties)),
    time: (label) => sync(() => node.time(label)),
    timeEnd: (label) => sync(() => node.timeEnd(label)),
    timeLog: (label, ...args) => sync(() => node.timeLog(label, ...args)),
    trace: (...args) => sync(() => node.trace(...args)),
    warn: (...args) => sync(() => node.warn(...args)),
    unsafe: node
  }
}

/**
 * Runs `weft ARGS` in this process, through the program `bin/weft` runs, with what it prints on the console captured:
 * for tests about a command's behaviour rather than the process (a child pays the TypeScript compile and Effect's
 * import, several seconds each). Tests about the process itself (signals, what it imports) spawn one instead.
 */
export const runWeftInProcess = async (args: ReadonlyArray<string>): Promise<WeftRun> => {
  const stdout: Array<string> = []
  const stderr: Array<string> = []
  const console = effectConsole(new NodeConsole({ stdout: collector(stdout), stderr: collector(stderr), colorMode: false }))
  const exit = await runWeft([process.execPath, "weft", ...args]).pipe(
    Effect.provide(NodeContext.layer),
    Effect.withConsole(console),
    Effect.runPromiseExit
  )
  return { code: Exit.isSuccess(exit) ? 0 : 1, stdout: stdout.join(""), stderr: stderr.join("") }
}

/**
 * Runs `weft ARGS` in a child process (`node --import tsx src/main.ts`), with `imports` loaded first: for what the
 * process itself does, such as which modules it imports.
 */
export const spawnWeft = (args: ReadonlyArray<string>, imports: ReadonlyArray<string> = []): Promise<WeftRun> => {
  const flags = [...imports.flatMap((module) => ["--import", module]), "--import", "tsx", "src/main.ts"]
  return promisify(execFile)(process.execPath, [...flags, ...args], { env: { ...process.env, NO_COLOR: "1" } }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (error: { code: number; stdout: string; stderr: string }) => ({ code: error.code, stdout: error.stdout, stderr: error.stderr })
  )
}
