import { Effect } from "effect"
import { resolveChatWrapper } from "node-llama-cpp"
import type { ChatHistoryItem, LlamaModel, Token } from "node-llama-cpp"
import { ChatTemplateFailed } from "../Backend.js"
import type { ChatMessage } from "../Backend.js"
import { errorMessage } from "./errorMessage.js"

/**
 * Renders conversations with `model`'s own chat template (node-llama-cpp's chat wrapper for it) into tokens, ending
 * with the assistant's generation prompt.
 */
export const chatRenderer = (model: LlamaModel) => {
  const chatWrapper = resolveChatWrapper(model)
  return (messages: ReadonlyArray<ChatMessage>): Effect.Effect<Array<Token>, ChatTemplateFailed> =>
    Effect.try({
      try: () => {
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
        return contextText.tokenize(model.tokenizer)
      },
      catch: (error) => new ChatTemplateFailed({ message: errorMessage(error) })
    })
}
