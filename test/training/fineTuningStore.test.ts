import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck, Layer } from "effect"
import { FineTuningStore } from "../../src/training/jobs/FineTuningStore.js"
import type { JobRecord } from "../../src/training/jobs/FineTuningStore.js"

const storeLayer = FineTuningStore.Default.pipe(Layer.provide(SqliteClient.layer({ filename: ":memory:" })))

const job = (id: string, priority: number): Omit<JobRecord, "seq" | "created_at"> => ({
  id,
  model: "m",
  base_path: "/m.gguf",
  training_file: "file-1",
  validation_file: null,
  n_epochs: 1,
  batch_size: 1,
  learning_rate_multiplier: 1,
  suffix: null,
  seed: 1,
  metadata: { priority: String(priority) },
  priority,
  status: "queued",
  fine_tuned_model: null,
  output_path: null,
  error: null,
  finished_at: null,
  trained_tokens: null,
  estimated_finish: null
})

describe("FineTuningStore", () => {
  it.effect.prop("the queue order is highest priority first, FIFO within a priority", [FastCheck.array(FastCheck.integer({ min: -2, max: 2 }), { maxLength: 12 })], ([priorities]) =>
    Effect.gen(function*() {
      const store = yield* FineTuningStore
      yield* Effect.forEach(priorities, (priority, at) => store.addJob(job(`ftjob-${at}`, priority)))
      const order = (yield* store.jobsIn(["queued"])).map((queued) => queued.id)
      const expected = priorities.map((priority, at) => ({ priority, at })).sort((a, b) => b.priority - a.priority || a.at - b.at).map(({ at }) => `ftjob-${at}`)
      expect(order).toEqual(expected)
    }).pipe(Effect.provide(storeLayer)))

  it.effect("lists jobs and events newest first in cursor pages, and keeps metadata and errors as JSON", () =>
    Effect.gen(function*() {
      const store = yield* FineTuningStore
      yield* Effect.forEach([0, 1, 2], (at) => store.addJob(job(`ftjob-${at}`, 0)))
      const first = yield* store.listJobs(undefined, 2)
      expect(first.data.map((listed) => listed.id)).toEqual(["ftjob-2", "ftjob-1"])
      expect(first.hasMore).toBe(true)
      const second = yield* store.listJobs("ftjob-1", 2)
      expect(second.data.map((listed) => listed.id)).toEqual(["ftjob-0"])
      expect(second.hasMore).toBe(false)

      yield* store.updateJob("ftjob-0", { status: "failed", error: { code: "training_failed", message: "boom", param: null } })
      const failed = yield* store.getJob("ftjob-0")
      expect(failed._tag === "Some" && failed.value).toMatchObject({ status: "failed", error: { message: "boom" }, metadata: { priority: "0" } })

      yield* Effect.forEach([1, 2, 3], (step) => store.addEvent("ftjob-0", { message: `step ${step}`, type: "metrics", data: { step } }))
      const events = yield* store.listEvents("ftjob-0", undefined, 2)
      expect(events.data.map((event) => event.message)).toEqual(["step 3", "step 2"])
      const older = yield* store.listEvents("ftjob-0", events.data[1]!.id, 2)
      expect(older.data.map((event) => event.data)).toEqual([{ step: 1 }])
      expect((yield* store.eventsSince("ftjob-0", 1)).map((event) => event.seq)).toEqual([2, 3])
    }).pipe(Effect.provide(storeLayer)))
})
