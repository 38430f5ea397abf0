import { describe, expect, it } from "@effect/vitest"
import { Effect, Metric } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { AuditLog, auditLine } from "../../src/identity/AuditLog.js"
import type { AuditEntry } from "../../src/identity/AuditLog.js"
import { WeftMetrics } from "../../src/observability/WeftMetrics.js"

const tempFile = () => path.join(fs.mkdtempSync(path.join(os.tmpdir(), "weft-audit-")), "nested", "audit.jsonl")

const change = (index: number): AuditEntry => ({ kind: "change", who: "cli", action: "key.create", target: `key_${index}`, tenant: "acme" })

describe("AuditLog", () => {
  it.live("writes every queued record by the time its scope closes (shutdown), in order", () =>
    Effect.gen(function*() {
      const file = tempFile()
      yield* Effect.forEach(Array.from({ length: 200 }, (_, index) => index), (index) => Effect.flatMap(AuditLog, (log) => log.record(change(index))), {
        discard: true
      }).pipe(Effect.provide(AuditLog.Default({ path: file })))
      const lines = fs.readFileSync(file, "utf8").trimEnd().split("\n").map((line) => JSON.parse(line) as { target: string; time: string })
      expect(lines.map((line) => line.target)).toEqual(Array.from({ length: 200 }, (_, index) => `key_${index}`))
      expect(lines.every((line) => !Number.isNaN(Date.parse(line.time)))).toBe(true)
    }))

  it.live("drops records past its queue instead of waiting on the disk, and counts the drops", () =>
    Effect.gen(function*() {
      const file = tempFile()
      const before = (yield* Metric.value(WeftMetrics.auditDropped)).count
      // No yield between the records: the writer fiber cannot run, so the queue fills.
      yield* Effect.flatMap(AuditLog, (log) => Effect.forEach(Array.from({ length: 50 }, (_, index) => index), (index) => log.record(change(index)), { discard: true }))
        .pipe(Effect.provide(AuditLog.Default({ path: file, queueLimit: 4 })))
      const written = fs.readFileSync(file, "utf8").trimEnd().split("\n").length
      const dropped = (yield* Metric.value(WeftMetrics.auditDropped)).count - before
      expect(dropped).toBeGreaterThan(0)
      expect(written + dropped).toBe(50)
    }))

  it("writes only the record's own fields, and never anything shaped like a key", () => {
    const line = auditLine({
      kind: "change",
      time: "2026-01-01T00:00:00.000Z",
      who: "key_admin",
      action: "key.rotate",
      target: "sk-weft-abcdef0123456789",
      // Fields the schema does not have are not written, whatever they hold.
      ...({ key: "sk-weft-secret", prompt: "hello there" } as object)
    } as Parameters<typeof auditLine>[0])
    expect(JSON.parse(line)).toEqual({ kind: "change", time: "2026-01-01T00:00:00.000Z", who: "key_admin", action: "key.rotate", target: "sk-weft-[redacted]" })
  })
})
