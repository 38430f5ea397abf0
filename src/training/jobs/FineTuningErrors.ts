import { Schema } from "effect"

/** No file or job has this id. */
export class FineTuningObjectNotFound extends Schema.TaggedError<FineTuningObjectNotFound>()("FineTuningObjectNotFound", {
  kind: Schema.Literal("file", "fine_tuning.job"),
  id: Schema.String
}) {
  override get message(): string {
    return this.kind === "file" ? `No such File object: ${this.id}` : `Could not find fine-tuning job ${this.id}`
  }
}

/** The job is in a state this action does not apply to (cancelling a finished job, resuming a running one). */
export class JobStateConflict extends Schema.TaggedError<JobStateConflict>()("JobStateConflict", {
  jobId: Schema.String,
  status: Schema.String,
  action: Schema.String
}) {
  override get message(): string {
    return `Cannot ${this.action} fine-tuning job ${this.jobId}: it is ${this.status}`
  }
}

/** An uploaded dataset failed validation; `problems` name the line or row and field of each. */
export class DatasetRejected extends Schema.TaggedError<DatasetRejected>()("DatasetRejected", {
  filename: Schema.String,
  problems: Schema.Array(Schema.String),
  total: Schema.Number
}) {
  override get message(): string {
    const more = this.total > this.problems.length ? ` (and ${this.total - this.problems.length} more)` : ""
    return `${this.filename} is not a valid fine-tuning dataset: ${this.problems.join("; ")}${more}`
  }
}

/** A job parameter names something that cannot be used: an unknown base model, a file of the wrong purpose. */
export class JobParamRejected extends Schema.TaggedError<JobParamRejected>()("JobParamRejected", {
  param: Schema.String,
  reason: Schema.String,
  code: Schema.String
}) {
  override get message(): string {
    return this.reason
  }
}

/** This server was composed without fine-tuning (no data dir for its files and jobs). */
export class FineTuningDisabled extends Schema.TaggedError<FineTuningDisabled>()("FineTuningDisabled", {}) {
  override get message(): string {
    return "Fine-tuning is not enabled on this server"
  }
}
