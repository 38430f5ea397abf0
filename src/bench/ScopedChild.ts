import type { ChildProcess, Serializable } from "node:child_process"
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

/**
 * The first message of a child (`name` in errors) that `accept` takes, over its IPC channel, sending `request` first
 * when given; `failed` makes the error for a child that is gone or a request that cannot be sent.
 */
export const replyFrom = <A, E>(
  { child, output }: ScopedChild,
  options: {
    readonly name: string
    readonly accept: (message: unknown) => A | undefined
    readonly failed: (message: string) => E
    readonly request?: Serializable | undefined
  }
): Effect.Effect<A, E> =>
  Effect.async<A, E>((resume) => {
    const gone = (code: number | null) => options.failed(`the ${options.name} process has exited (${code}): ${output().trim()}`)
    const onMessage = (message: unknown) => {
      const accepted = options.accept(message)
      if (accepted === undefined) return
      cleanup()
      resume(Effect.succeed(accepted))
    }
    const onClose = (code: number | null) => {
      cleanup()
      resume(Effect.fail(gone(code)))
    }
    const cleanup = () => {
      child.off("message", onMessage)
      child.off("close", onClose)
    }
    if (!child.connected) return resume(Effect.fail(gone(child.exitCode)))
    child.on("message", onMessage)
    child.on("close", onClose)
    if (options.request !== undefined) {
      child.send(options.request, (error) => {
        if (error === null) return
        cleanup()
        resume(Effect.fail(options.failed(error.message)))
      })
    }
    return Effect.sync(cleanup)
  })
