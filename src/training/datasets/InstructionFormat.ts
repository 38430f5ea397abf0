import { checked, type FormatValidator, stringField } from "./FormatCheck.js"

/** Alpaca-style records: `{"instruction": …, "input": … (optional), "output": …}`, trained as a user/assistant turn. */
export const validateInstruction: FormatValidator = (record) =>
  checked(
    [stringField(record, "instruction"), stringField(record, "input", "input", true), stringField(record, "output")],
    () => {
      const input = typeof record.input === "string" && record.input.trim() !== "" ? `\n\n${record.input}` : ""
      return {
        _tag: "Chat",
        messages: [
          { role: "user", content: `${record.instruction as string}${input}` },
          { role: "assistant", content: record.output as string }
        ]
      }
    }
  )
