import { resolveChatWrapper } from "node-llama-cpp"
import type { ChatHistoryItem, LlamaModel, Token } from "node-llama-cpp"
import type { ChatMessage } from "../Backend.js"

/**
 * Renders conversations with `model`'s own chat template (node-llama-cpp's chat wrapper for it) into tokens, ending
 * with the assistant's generation prompt. Throws what the template throws.
 */
export const chatRenderer = (model: LlamaModel) => {
  const chatWrapper = resolveChatWrapper(model)
  return (messages: ReadonlyArray<ChatMessage>): Array<Token> => {
    const chatHistory: Array<ChatHistoryItem> = messages.map((message) =>
      message.role === "assistant"
        ? { type: "model", response: [message.content] }
        : message.role === "system"
        ? { type: "system", text: message.content }
        : { type: "user", text: message.content }
    )
    // An empty model turn at the end makes the template emit the assistant's generation prompt.
    chatHistory.push({ type: "model", response: [] })
    const { contextText } = chatWrapper.generateContextState({ chatHistory })
    // Message text is tokenized with special=false: a user's `<s>` stays text.
    return contextText.tokenize(model.tokenizer)
  }
}
