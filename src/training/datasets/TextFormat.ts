import { checked, type FormatValidator, stringField } from "./FormatCheck.js"

/** Plain text records: `{"text": …}`, trained on every token. */
export const validateText: FormatValidator = (record) =>
  checked([stringField(record, "text")], () => ({ _tag: "Text", text: record.text as string }))
