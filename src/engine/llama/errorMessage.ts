/** The message of a value node-llama-cpp threw: an `Error`'s message, anything else as a string. */
export const errorMessage = (error: unknown): string => (error instanceof Error ? error.message : String(error))
