import * as fs from "node:fs"
import { Effect } from "effect"

/** CPU time counters at one instant, in clock ticks (Linux `/proc`). */
export interface CpuSnapshot {
  readonly busy: number
  readonly total: number
  /** Ticks used by the bench's own processes (this one and the server it started). */
  readonly own: number
}

const readTicks = (pid: number | "self"): number => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return Number(fields[11]) + Number(fields[12])
  } catch {
    return 0
  }
}

/** Machine-wide and own CPU counters now; `undefined` where `/proc` is not available. */
export const cpuSnapshot = (pids: ReadonlyArray<number>): CpuSnapshot | undefined => {
  try {
    const line = fs.readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!
    const ticks = line.trim().split(/\s+/).slice(1).map(Number)
    const idle = (ticks[3] ?? 0) + (ticks[4] ?? 0)
    const total = ticks.reduce((sum, value) => sum + value, 0)
    const own = readTicks("self") + pids.reduce((sum, pid) => sum + readTicks(pid), 0)
    return { busy: total - idle, total, own }
  } catch {
    return undefined
  }
}

/**
 * Share of the machine's CPU that OTHER processes used between two snapshots, 0–1: the bench's numbers are only
 * comparable between runs with similar background load (on 2 cores, one busy neighbour halves llama.cpp's speed).
 */
export const backgroundLoad = (before: CpuSnapshot | undefined, after: CpuSnapshot | undefined): number | undefined => {
  if (before === undefined || after === undefined) return undefined
  const total = after.total - before.total
  if (total <= 0) return undefined
  const others = after.busy - before.busy - (after.own - before.own)
  return Math.min(1, Math.max(0, others / total))
}

/** Waits (at most `maxSeconds`) until other processes use less than `threshold` of the CPU over one second. */
export const waitForQuiet = (threshold: number, maxSeconds: number, pids: ReadonlyArray<number>) =>
  Effect.gen(function*() {
    const deadline = Date.now() + maxSeconds * 1000
    while (Date.now() < deadline) {
      const before = cpuSnapshot(pids)
      yield* Effect.sleep("1 second")
      const load = backgroundLoad(before, cpuSnapshot(pids))
      if (load === undefined || load < threshold) return
    }
  })
