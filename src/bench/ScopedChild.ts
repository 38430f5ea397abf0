import type { ChildProcess } from "node:child_process"
import { Effect } from "effect"
import type { Scope } from "effect"

/** A child process owned by a scope, with the tail of what it printed. */
export interface ScopedChild {
  readonly child: ChildProcess
  /** The last `keepChars` characters of its stdout and stderr, interleaved as they came. */
  readonly output: () => string
}

/** Resolves once `child` has exited (at once if it already has). */
export const exited = (child: ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else child.once("exit", () => resolve())
  })

/**
 * Starts a child process (with piped stdout and stderr) for the scope: its output's tail is kept for error messages,
 * and closing the scope sends SIGTERM, then SIGKILL if it has not exited 15 s later, and waits for the exit.
 */
export const scopedChild = (start: () => ChildProcess, keepChars: number): Effect.Effect<ScopedChild, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync((): ScopedChild => {
      let output = ""
      const child = start()
      const keep = (part: Buffer) => {
        output = (output + part.toString("utf8")).slice(-keepChars)
      }
      child.stdout?.on("data", keep)
      child.stderr?.on("data", keep)
      return { child, output: () => output }
    }),
    ({ child }) =>
      Effect.promise(async () => {
        if (child.exitCode !== null || child.signalCode !== null) return
        child.kill("SIGTERM")
        const timer = setTimeout(() => child.kill("SIGKILL"), 15_000)
        await exited(child)
        clearTimeout(timer)
      })
  )
