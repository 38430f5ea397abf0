import type { TrainingMessage } from "./DatasetRecord.js"
import { checked, type FieldProblem, type FormatValidator, invalid, typeName } from "./FormatCheck.js"

const roles = new Set(["system", "user", "assistant", "tool"])

/**
 * Checks turns shaped like OpenAI chat messages, under `field`: each an object with a known role and string content,
 * at least one from the assistant, which training learns from.
 */
export const checkTurns = (
  turns: unknown,
  field: string,
  roleKey: string,
  contentKey: string,
  roleOf: (role: string) => TrainingMessage["role"] | undefined
): { readonly problems: ReadonlyArray<FieldProblem>; readonly messages: ReadonlyArray<TrainingMessage> } => {
  if (turns === undefined || turns === null) return { problems: [{ field, message: "is missing" }], messages: [] }
  if (!Array.isArray(turns)) return { problems: [{ field, message: `must be an array, got ${typeName(turns)}` }], messages: [] }
  if (turns.length === 0) return { problems: [{ field, message: "is empty" }], messages: [] }
  const problems: Array<FieldProblem> = []
  const messages: Array<TrainingMessage> = []
  turns.forEach((turn: unknown, at) => {
    const here = `${field}[${at}]`
    if (typeof turn !== "object" || turn === null || Array.isArray(turn)) {
      problems.push({ field: here, message: `must be an object, got ${typeName(turn)}` })
      return
    }
    const entry = turn as Record<string, unknown>
    const rawRole = entry[roleKey]
    const role = typeof rawRole === "string" ? roleOf(rawRole) : undefined
    if (role === undefined) {
      problems.push({ field: `${here}.${roleKey}`, message: rawRole === undefined ? "is missing" : `unknown role ${JSON.stringify(rawRole)}` })
    }
    const content = entry[contentKey]
    if (typeof content !== "string") {
      problems.push({ field: `${here}.${contentKey}`, message: content === undefined ? "is missing" : `must be a string, got ${typeName(content)}` })
    } else if (role === "assistant" && content.trim() === "") {
      problems.push({ field: `${here}.${contentKey}`, message: "an assistant turn is empty" })
    }
    if (role !== undefined && typeof content === "string") messages.push({ role, content })
  })
  if (problems.length === 0 && !messages.some((message) => message.role === "assistant")) {
    problems.push({ field, message: "has no assistant turn to learn from" })
  }
  return { problems, messages }
}

/** OpenAI chat fine-tuning records: `{"messages": [{"role": …, "content": …}, …]}`. */
export const validateChat: FormatValidator = (record) => {
  const turns = checkTurns(record.messages, "messages", "role", "content", (role) => roles.has(role) ? role as TrainingMessage["role"] : undefined)
  return turns.problems.length > 0 ? invalid(...turns.problems) : checked([], () => ({ _tag: "Chat", messages: turns.messages }))
}
