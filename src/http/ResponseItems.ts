import { Schema } from "effect"
import { randomUUID } from "node:crypto"
import type { ChatMessage } from "../engine/Backend.js"
import type { ToolCallEvent } from "../engine/ToolCallParser.js"
import { newCallId } from "./GenerationResponse.js"
import { InvalidParam } from "./HttpErrors.js"
import { expectedExactly, FunctionName, FunctionToolFields, FunctionToolType, optional } from "./OpenAiRequests.js"
import type { ChatCompletionRequest } from "./OpenAiRequests.js"
import type { ToolCallOutput } from "./OpenAiResponses.js"

/** A text content part of an input item; earlier assistant output comes back as `output_text`. */
const InputTextPart = Schema.Struct({
  type: Schema.Literal("input_text", "output_text").annotations(
    expectedExactly("\"input_text\" or \"output_text\" (only text content parts are supported)")
  ),
  text: Schema.String
})

const textOf = (content: string | ReadonlyArray<{ readonly text: string }>) =>
  typeof content === "string" ? content : content.map((part) => part.text).join("")

/** One input message item. */
const InputMessage = Schema.Struct({
  type: optional(Schema.Literal("message").annotations(
    expectedExactly("\"message\", \"function_call\" or \"function_call_output\" (the item types supported)")
  )),
  role: Schema.Literal("system", "developer", "user", "assistant").annotations(
    expectedExactly("one of \"system\", \"developer\", \"user\", \"assistant\"")
  ),
  content: Schema.Union(Schema.String, Schema.Array(InputTextPart))
})

/** A tool call the model made earlier, sent back as it came in `output`. */
const FunctionCallItem = Schema.Struct({
  type: Schema.Literal("function_call"),
  call_id: Schema.String,
  name: FunctionName,
  arguments: Schema.String
})

/** The result of a tool call, for the call with the same `call_id`. */
const FunctionCallOutputItem = Schema.Struct({
  type: Schema.Literal("function_call_output"),
  call_id: Schema.String,
  output: Schema.Union(Schema.String, Schema.Array(InputTextPart))
})

/** One item of `input`: a message, an earlier function call, or a function call's output. */
export const InputItem = Schema.Union(InputMessage, FunctionCallItem, FunctionCallOutputItem)
export type InputItem = typeof InputItem.Type

/** A function tool as the Responses API spells it: flat, without chat's `function` wrapper. */
export const ResponseFunctionTool = Schema.Struct({ type: FunctionToolType, ...FunctionToolFields })
export type ResponseFunctionTool = typeof ResponseFunctionTool.Type

/** `tool_choice` as the Responses API spells it. */
export const ResponseToolChoice = Schema.Union(
  Schema.Literal("none", "auto", "required"),
  Schema.Struct({ type: Schema.Literal("function"), name: Schema.String })
).annotations(expectedExactly("\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": …}"))
export type ResponseToolChoice = typeof ResponseToolChoice.Type

/** The tool fields of a chat request, from a Responses request's, so both endpoints validate and plan tools alike. */
export const chatToolFields = (body: {
  readonly tools?: ReadonlyArray<ResponseFunctionTool> | undefined
  readonly tool_choice?: ResponseToolChoice | undefined
  readonly parallel_tool_calls?: boolean | undefined
}): Pick<ChatCompletionRequest, "tools" | "tool_choice" | "parallel_tool_calls"> => ({
  tools: body.tools?.map(({ type, ...fn }) => ({ type, function: fn })),
  tool_choice: typeof body.tool_choice === "object"
    ? { type: "function", function: { name: body.tool_choice.name } }
    : body.tool_choice,
  parallel_tool_calls: body.parallel_tool_calls
})

/** A chat-shaped error about `tools[i].function.…` names the Responses request's `tools[i].…`. */
export const responsesToolParam = (error: InvalidParam): InvalidParam => {
  const chatPath = /^tools\[(\d+)\]\.function\./
  return error.param !== null && chatPath.test(error.param)
    ? new InvalidParam({
      param: error.param.replace(chatPath, "tools[$1]."),
      message: error.message.replaceAll(/tools\[(\d+)\]\.function\./g, "tools[$1]."),
      code: error.code
    })
    : error
}

/**
 * The conversation `input` items carry, as the chat template takes it: `developer` is a system message; function
 * calls join the assistant message right before them (or make one of their own), and outputs become tool messages
 * answering their `call_id`.
 */
export const conversationOf = (input: string | ReadonlyArray<InputItem>): ReadonlyArray<ChatMessage> => {
  if (typeof input === "string") return [{ role: "user", content: input }]
  const messages: Array<ChatMessage> = []
  for (const item of input) {
    if (item.type === "function_call") {
      const call = { id: item.call_id, name: item.name, arguments: item.arguments }
      const last = messages.at(-1)
      if (last?.role === "assistant") messages[messages.length - 1] = { ...last, toolCalls: [...(last.toolCalls ?? []), call] }
      else messages.push({ role: "assistant", content: "", toolCalls: [call] })
    } else if (item.type === "function_call_output") {
      messages.push({ role: "tool", content: textOf(item.output), toolCallId: item.call_id })
    } else {
      messages.push({ role: item.role === "developer" ? "system" : item.role, content: textOf(item.content) })
    }
  }
  return messages
}

/**
 * Fails for the first `function_call_output` item whose `call_id` answers no call of the conversation before it (the
 * stored `history` or an earlier `function_call` item): the template would leave such a result out of the prompt.
 */
export const checkCallOutputs = (history: ReadonlyArray<ChatMessage>, input: string | ReadonlyArray<InputItem>): InvalidParam | undefined => {
  if (typeof input === "string") return undefined
  const calls = new Set(history.flatMap((message) => (message.toolCalls ?? []).map((call) => call.id)))
  for (const [index, item] of input.entries()) {
    if (item.type === "function_call") calls.add(item.call_id)
    else if (item.type === "function_call_output" && !calls.has(item.call_id)) {
      return new InvalidParam({
        param: `input[${index}].call_id`,
        message: `No function call found for the function_call_output with call_id '${item.call_id}'`,
        code: "invalid_value"
      })
    }
  }
  return undefined
}

export const newItemId = (prefix: string) => `${prefix}_${randomUUID().replaceAll("-", "")}`

type ItemStatus = "in_progress" | "completed" | "incomplete"

export const outputText = (text: string) => ({ type: "output_text", text, annotations: [], logprobs: [] })

export const messageItem = (id: string, status: ItemStatus, content: ReadonlyArray<unknown>) => ({
  type: "message",
  id,
  status,
  role: "assistant",
  content
})

/** A `function_call` output item: `call_id` is what its `function_call_output` answers. */
export const functionCallItem = (id: string, call: ToolCallOutput, status: ItemStatus) => ({
  type: "function_call",
  id,
  call_id: call.id,
  name: call.name,
  arguments: call.arguments,
  status
})

/**
 * The output items of a finished generation: its text as a message (left out when it made tool calls and wrote no
 * text), then one `function_call` item per call.
 */
export const outputItemsOf = (messageId: string, text: string, calls: ReadonlyArray<ToolCallOutput>, status: "completed" | "incomplete") => [
  ...(text !== "" || calls.length === 0 ? [messageItem(messageId, status, [outputText(text)])] : []),
  ...calls.map((call) => functionCallItem(newItemId("fc"), call, "completed"))
]

/** One Responses SSE event: its type and data, before it is numbered. */
export interface ResponseEvent {
  readonly type: string
  readonly data: Record<string, unknown>
}

type OpenItem =
  | { readonly _tag: "Message"; readonly index: number; text: string }
  | { readonly _tag: "Call"; readonly index: number; readonly id: string; readonly call: { id: string; name: string; arguments: string } }

/**
 * The output items of a streamed response as they form: a message opens at its first text (or at once, for a
 * response without tools), a `function_call` item at each call's start; each is done when the next one opens or the
 * generation ends. Used by one stream's fiber, one event at a time.
 */
export class StreamedOutput {
  private readonly items: Array<unknown> = []
  private open: OpenItem | undefined
  readonly calls: Array<ToolCallOutput> = []

  constructor(private readonly messageId: string) {}

  /** The message's text so far, for the stored conversation. */
  text = ""

  private close(status: "completed" | "incomplete"): ReadonlyArray<ResponseEvent> {
    const open = this.open
    this.open = undefined
    if (open === undefined) return []
    const at = { output_index: open.index }
    if (open._tag === "Message") {
      const part = outputText(open.text)
      const item = messageItem(this.messageId, status, [part])
      this.items[open.index] = item
      const content = { ...at, item_id: this.messageId, content_index: 0 }
      return [
        { type: "response.output_text.done", data: { ...content, text: open.text, logprobs: [] } },
        { type: "response.content_part.done", data: { ...content, part } },
        { type: "response.output_item.done", data: { ...at, item } }
      ]
    }
    const item = functionCallItem(open.id, open.call, "completed")
    this.items[open.index] = item
    this.calls.push(open.call)
    return [
      { type: "response.function_call_arguments.done", data: { ...at, item_id: open.id, name: open.call.name, arguments: open.call.arguments } },
      { type: "response.output_item.done", data: { ...at, item } }
    ]
  }

  /** Opens the message item (closing a call before it). */
  openMessage(): ReadonlyArray<ResponseEvent> {
    const closed = this.close("completed")
    const index = this.items.push(undefined) - 1
    this.open = { _tag: "Message", index, text: "" }
    const at = { output_index: index }
    return [
      ...closed,
      { type: "response.output_item.added", data: { ...at, item: messageItem(this.messageId, "in_progress", []) } },
      { type: "response.content_part.added", data: { ...at, item_id: this.messageId, content_index: 0, part: outputText("") } }
    ]
  }

  /** Text, or a tool call's start or arguments, as the tool-call parser (or, without tools, the generation) gives it. */
  push(event: ToolCallEvent): ReadonlyArray<ResponseEvent> {
    if (event._tag === "Text") {
      if (event.text === "") return []
      const opened = this.open?._tag === "Message" ? [] : this.openMessage()
      const open = this.open as Extract<OpenItem, { _tag: "Message" }>
      open.text += event.text
      this.text += event.text
      const delta = { output_index: open.index, item_id: this.messageId, content_index: 0, delta: event.text, logprobs: [] }
      return [...opened, { type: "response.output_text.delta", data: delta }]
    }
    if (event._tag === "CallStarted") {
      const closed = this.close("completed")
      const index = this.items.push(undefined) - 1
      const call = { id: newCallId(), name: event.name, arguments: "" }
      const open: OpenItem = { _tag: "Call", index, id: newItemId("fc"), call }
      this.open = open
      return [...closed, { type: "response.output_item.added", data: { output_index: index, item: functionCallItem(open.id, call, "in_progress") } }]
    }
    if (this.open?._tag !== "Call") return []
    this.open.call.arguments += event.text
    return [{ type: "response.function_call_arguments.delta", data: { output_index: this.open.index, item_id: this.open.id, delta: event.text } }]
  }

  /** Closes the last item (a response with no item gets its empty message) and gives the finished output. */
  finish(status: "completed" | "incomplete"): { readonly events: ReadonlyArray<ResponseEvent>; readonly output: ReadonlyArray<unknown> } {
    const opened = this.items.length === 0 ? this.openMessage() : []
    const events = [...opened, ...this.close(status)]
    return { events, output: this.items.slice() }
  }
}
