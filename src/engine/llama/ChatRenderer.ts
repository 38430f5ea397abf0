import { JinjaTemplateChatWrapper, LlamaText, resolveChatWrapper, SpecialTokensText } from "node-llama-cpp"
import type { ChatHistoryItem, ChatModelFunctions, ChatModelResponse, ChatWrapper, LlamaModel, Token } from "node-llama-cpp"
import type { ChatMessage } from "../Backend.js"
import { hermesToolCallSyntax } from "../ToolCallSyntax.js"
import type { ToolCallSyntax, ToolFunction } from "../ToolCallSyntax.js"

/** Renders conversations with one model's chat template, and says how that template has the model call tools. */
export interface ChatRenderer {
  /** Tokens of the conversation, ending with the assistant's generation prompt. Throws what the template throws. */
  readonly render: (messages: ReadonlyArray<ChatMessage>, tools?: ReadonlyArray<ToolFunction>) => Array<Token>
  readonly toolCallSyntax: ToolCallSyntax
}

/**
 * The chat wrapper for conversations with tools: the model's own Jinja template when node-llama-cpp could read a
 * tool-call syntax from it (templates that render `tools` and `tool_calls`, such as Hermes / Qwen2.5 ones), else the
 * wrapper node-llama-cpp resolves for the model, with that wrapper's own syntax. The two differ because node-llama-cpp
 * resolves a template that renders plain chats like ChatML to its ChatML wrapper, which has a syntax of its own.
 */
const toolChatWrapper = (model: LlamaModel, plain: ChatWrapper): ChatWrapper => {
  const template = model.fileInfo.metadata?.tokenizer?.chat_template
  if (typeof template !== "string" || !template.includes("tool")) return plain
  try {
    const wrapper = new JinjaTemplateChatWrapper({ template, tokenizer: model.tokenizer })
    return wrapper.usingJinjaFunctionCallTemplate ? wrapper : plain
  } catch {
    return plain
  }
}

/** `value` as plain text, or undefined when it holds a special token that has no text of its own (such as BOS). */
const textOf = (value: string | LlamaText | undefined): string | undefined => {
  if (value === undefined) return ""
  let text = ""
  for (const part of LlamaText(value).values) {
    if (typeof part === "string") text += part
    else if (part instanceof SpecialTokensText) text += part.value
    else return undefined
  }
  return text
}

/** The wrapper's tool-call syntax as text; Hermes's where the wrapper's needs special tokens. */
const syntaxOf = (wrapper: ChatWrapper): ToolCallSyntax => {
  const functions = wrapper.settings.functions
  const syntax = {
    sectionPrefix: textOf(functions.parallelism?.call.sectionPrefix),
    callPrefix: textOf(functions.call.prefix),
    paramsPrefix: textOf(functions.call.paramsPrefix),
    callSuffix: textOf(functions.call.suffix),
    betweenCalls: textOf(functions.parallelism?.call.betweenCalls)
  }
  const complete = Object.values(syntax).every((part) => part !== undefined) && syntax.callPrefix !== "" &&
    syntax.paramsPrefix !== ""
  return complete ? (syntax as ToolCallSyntax) : hermesToolCallSyntax
}

const parsedOr = (json: string): unknown => {
  try {
    return JSON.parse(json)
  } catch {
    return json
  }
}

/**
 * node-llama-cpp's history: an assistant turn's tool calls become function calls of its model response, each with the
 * result of the `tool` message answering it; text the assistant wrote after the results continues the same response.
 * A conversation whose last message is a tool result continues that response (the model answers the results).
 */
const historyOf = (messages: ReadonlyArray<ChatMessage>): Array<ChatHistoryItem> => {
  const results = new Map<string, string>()
  for (const message of messages) {
    if (message.role === "tool" && message.toolCallId !== undefined) results.set(message.toolCallId, message.content)
  }
  const history: Array<ChatHistoryItem> = []
  let previous: ChatMessage | undefined
  for (const message of messages) {
    const last = history[history.length - 1]
    if (message.role === "system") history.push({ type: "system", text: message.content })
    else if (message.role === "user") history.push({ type: "user", text: message.content })
    else if (message.role === "assistant") {
      const continuing = previous?.role === "tool" && last?.type === "model"
      const response: ChatModelResponse["response"] = continuing ? last.response : []
      if (message.content !== "") response.push(message.content)
      message.toolCalls?.forEach((call, index) =>
        response.push({
          type: "functionCall",
          name: call.name,
          params: parsedOr(call.arguments),
          result: results.get(call.id) ?? "",
          startsNewChunk: index === 0
        })
      )
      if (!continuing) history.push({ type: "model", response })
    }
    previous = message
  }
  // An empty model turn at the end makes the template emit the assistant's generation prompt.
  if (previous?.role !== "tool" || history[history.length - 1]?.type !== "model") history.push({ type: "model", response: [] })
  return history
}

const functionsOf = (tools: ReadonlyArray<ToolFunction>): ChatModelFunctions =>
  Object.fromEntries(tools.map((tool) => [tool.name, {
    ...(tool.description === undefined ? {} : { description: tool.description }),
    // node-llama-cpp's GbnfJsonSchema type only narrows JSON schema; the schemas were checked by `toGrammarSchema`.
    params: tool.parameters as never
  }]))

/**
 * Each loaded model's renderer. Resolving a chat wrapper renders the model's template against node-llama-cpp's known
 * wrappers (about a second even for the tiny test model), and the tokenizer, the backend and every adapter context of
 * a model ask for it: resolved once per model instead. Nothing in a renderer changes after it is made.
 */
const renderers = new WeakMap<LlamaModel, ChatRenderer>()

/** Renders conversations with `model`'s own chat template (node-llama-cpp's chat wrapper for it) into tokens. */
export const chatRenderer = (model: LlamaModel): ChatRenderer => {
  const known = renderers.get(model)
  if (known !== undefined) return known
  const renderer = makeChatRenderer(model)
  renderers.set(model, renderer)
  return renderer
}

const makeChatRenderer = (model: LlamaModel): ChatRenderer => {
  const plain = resolveChatWrapper(model)
  const withTools = toolChatWrapper(model, plain)
  return {
    toolCallSyntax: syntaxOf(withTools),
    render: (messages, tools) => {
      const usesTools = tools !== undefined ||
        messages.some((message) => message.role === "tool" || (message.toolCalls?.length ?? 0) > 0)
      const chatHistory = historyOf(messages)
      const wrapper = usesTools ? withTools : plain
      const { contextText } = tools === undefined
        ? wrapper.generateContextState({ chatHistory })
        : wrapper.generateContextState({ chatHistory, availableFunctions: functionsOf(tools) })
      // Message text is tokenized with special=false: a user's `<s>` stays text.
      return contextText.tokenize(model.tokenizer)
    }
  }
}
