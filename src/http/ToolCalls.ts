import { Effect, Either } from "effect"
import type { BackendShape } from "../engine/Backend.js"
import type { ToolCallsConstraint } from "../engine/SamplingOptions.js"
import type { ToolCallSyntax, ToolFunction } from "../engine/ToolCallSyntax.js"
import { toGrammarSchema } from "../engine/llama/JsonSchemaGrammar.js"
import { InvalidParam } from "./HttpErrors.js"
import type { ChatCompletionRequest } from "./OpenAiRequests.js"

/** How a chat request uses tools: what the output is constrained to, and in which syntax it is parsed. */
export interface ToolPlan {
  readonly constraint: ToolCallsConstraint
  readonly syntax: ToolCallSyntax
}

/** OpenAI's default for a function declared without `parameters`: no arguments. */
const noParameters = { type: "object", properties: {} }

const invalidSchema = (param: string, message: string) =>
  new InvalidParam({ param, message: `Invalid JSON schema at '${param}': ${message}`, code: "invalid_json_schema" })

/**
 * The tools offered to the model, as its template renders them: none with `tool_choice: "none"` (the model is not told
 * about them, so it answers in text).
 */
export const offeredTools = (body: ChatCompletionRequest): ReadonlyArray<ToolFunction> | undefined =>
  body.tools === undefined || body.tools.length === 0 || body.tool_choice === "none"
    ? undefined
    : body.tools.map((tool) => ({
      name: tool.function.name,
      description: tool.function.description,
      parameters: tool.function.parameters ?? noParameters
    }))

/** One function's arguments schema in the form the grammar builder takes, checked by the engine before admission. */
const functionSchema = (
  backend: BackendShape,
  parameters: unknown,
  index: number
): Effect.Effect<unknown, InvalidParam> => {
  const param = (at: string) => `tools[${index}].function.parameters${at === "" ? "" : `.${at}`}`
  return Either.match(toGrammarSchema(parameters), {
    onLeft: (problem) => Effect.fail(invalidSchema(param(problem.at), problem.message)),
    onRight: (schema) =>
      schema["type"] !== "object"
        ? Effect.fail(invalidSchema(param("type"), "the parameters of a function must be an object schema (\"type\": \"object\")"))
        : Effect.as(
          Effect.mapError(backend.checkGrammar({ _tag: "JsonSchema", schema }), (rejected) =>
            invalidSchema(param(""), `the engine could not build a grammar for this schema (${rejected.message})`)),
          schema
        )
  })
}

/**
 * Validates `tools`, `tool_choice` and `parallel_tool_calls` and plans the constrained generation: `required` or a
 * named function allow only tool calls; `auto` allows calls or a text answer; `none` (or no tools) leaves the output
 * alone. Fails with a 400 naming the parameter at fault.
 */
export const toolPlanOf = (
  body: ChatCompletionRequest,
  backend: BackendShape
): Effect.Effect<ToolPlan | undefined, InvalidParam> =>
  Effect.gen(function*() {
    const unanswerable = body.messages.findIndex((message) => message.role === "tool" && message.tool_call_id === undefined)
    if (unanswerable !== -1) {
      const param = `messages[${unanswerable}].tool_call_id`
      return yield* new InvalidParam({ param, message: `Missing required parameter: '${param}'.`, code: "missing_required_parameter" })
    }
    const tools = body.tools ?? []
    const choice = body.tool_choice ?? "auto"
    if (tools.length === 0) {
      if (choice === "none" || choice === "auto") return undefined
      return yield* new InvalidParam({
        param: "tool_choice",
        message: "Invalid value for 'tool_choice': a tool choice other than \"none\" or \"auto\" needs 'tools'",
        code: "invalid_value"
      })
    }
    const names = new Set<string>()
    for (const [index, tool] of tools.entries()) {
      if (names.has(tool.function.name)) {
        return yield* new InvalidParam({
          param: `tools[${index}].function.name`,
          message: `Invalid value for 'tools[${index}].function.name': the function '${tool.function.name}' is declared twice`,
          code: "invalid_value"
        })
      }
      names.add(tool.function.name)
    }
    if (typeof choice === "object" && !names.has(choice.function.name)) {
      return yield* new InvalidParam({
        param: "tool_choice",
        message: `Invalid value for 'tool_choice': no function named '${choice.function.name}' is among the tools`,
        code: "invalid_value"
      })
    }
    const schemas = yield* Effect.forEach(tools, (tool, index) => functionSchema(backend, tool.function.parameters ?? noParameters, index))
    if (choice === "none") return undefined
    if (body.response_format !== undefined && body.response_format.type !== "text") {
      return yield* new InvalidParam({
        param: "response_format",
        message: "Invalid value for 'response_format': a JSON response format cannot be combined with tools unless 'tool_choice' is \"none\"",
        code: "invalid_value"
      })
    }
    const functions = tools.flatMap((tool, index) =>
      typeof choice === "object" && choice.function.name !== tool.function.name ? [] : [{ name: tool.function.name, schema: schemas[index] }]
    )
    const syntax = backend.toolCallSyntax
    const constraint: ToolCallsConstraint = {
      _tag: "ToolCalls",
      syntax,
      functions,
      allowText: choice === "auto",
      parallel: body.parallel_tool_calls ?? true
    }
    yield* Effect.mapError(backend.checkGrammar(constraint), (rejected) =>
      invalidSchema("tools", `the engine could not build the tool-call grammar (${rejected.message})`))
    return { constraint, syntax }
  })
