import type { JobRecord } from "../../src/training/jobs/FineTuningStore.js"

type NewJob = Omit<JobRecord, "seq" | "created_at">

/** A queued job row as the store takes it, with defaults for what a test does not set. */
export const queuedJobRow = (id: string, overrides: Partial<NewJob> = {}): NewJob => ({
  id, model: "m", base_path: "/m.gguf", training_file: "file-1", validation_file: null, n_epochs: 1, batch_size: 1,
  learning_rate_multiplier: 1, suffix: null, seed: 1, metadata: null, priority: 0, status: "queued",
  fine_tuned_model: null, output_path: null, error: null, finished_at: null, trained_tokens: null, estimated_finish: null,
  ...overrides
})
