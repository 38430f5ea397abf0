import { checked, type FormatValidator, stringField } from "./FormatCheck.js"

/** Prompt/completion records: `{"prompt": …, "completion": …}`; the prompt may be empty, the completion not. */
export const validateCompletion: FormatValidator = (record) =>
  checked(
    [
      typeof record.prompt === "string" ? undefined : stringField(record, "prompt"),
      stringField(record, "completion")
    ],
    () => ({ _tag: "Completion", prompt: record.prompt as string, completion: record.completion as string })
  )
