/** Weft: an Effect-native LLM server and library. The model layers (`weft/ai`), the server layers (`weft/server`), the CLI (`weft/cli`). */
export * from "./ai/index.js"
export * from "./server.js"
export { cli, weftCommand } from "./cli/WeftCli.js"
