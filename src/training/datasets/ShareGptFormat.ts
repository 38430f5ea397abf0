import type { TrainingMessage } from "./DatasetRecord.js"
import { checkTurns } from "./ChatFormat.js"
import { checked, type FormatValidator, invalid } from "./FormatCheck.js"

const roles: Readonly<Record<string, TrainingMessage["role"]>> = {
  system: "system",
  human: "user",
  user: "user",
  gpt: "assistant",
  assistant: "assistant",
  tool: "tool",
  function_response: "tool"
}

/** ShareGPT records: `{"conversations": [{"from": "human"|"gpt"|"system", "value": …}, …]}`. */
export const validateShareGpt: FormatValidator = (record) => {
  const turns = checkTurns(record.conversations, "conversations", "from", "value", (role) => roles[role])
  return turns.problems.length > 0 ? invalid(...turns.problems) : checked([], () => ({ _tag: "Chat", messages: turns.messages }))
}
