// Weft's OpenAI routes mounted inside an existing @effect/platform HTTP app, next to the app's own routes.
// Run: npm run example:mount   (serves on PORT, default 8787 (0: any free port), calls both kinds of route once and prints the answers;
// set KEEP_SERVING=1 to keep the server up afterwards, e.g. for `curl localhost:8787/llm/v1/models`.)
import { HttpRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Console, Effect, Layer, Logger, LogLevel } from "effect"
import { createServer } from "node:http"
import { httpApiServicesLayer, localModelLayer, ModelRegistry, WeftHttpServer } from "weft/server"

const port = Number(process.env["PORT"] ?? 8787)

/** The existing app: its own routes, and Weft's whole API under `/llm` (so an OpenAI client's base URL is `/llm/v1`). */
const App = Effect.gen(function*() {
  const weft = yield* WeftHttpServer.app({ host: "127.0.0.1", maxBodyBytes: 4 * 1024 * 1024 })
  return HttpRouter.empty.pipe(
    HttpRouter.get("/hello", HttpServerResponse.text("hello from my app")),
    HttpRouter.mountApp("/llm", weft)
  )
})

const Server = Layer.unwrapEffect(Effect.map(App, (app) => HttpServer.serve(app))).pipe(
  Layer.provideMerge(NodeHttpServer.layer(createServer, { host: "127.0.0.1", port })),
  Layer.provide(httpApiServicesLayer()),
  Layer.provideMerge(localModelLayer({ modelId: "demo", parallel: 2 })),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

const demo = Effect.gen(function*() {
  yield* Effect.flatMap(ModelRegistry, (registry) => registry.ready)
  const { address } = yield* HttpServer.HttpServer
  const base = `http://127.0.0.1:${address._tag === "TcpAddress" ? address.port : port}`
  const hello = yield* Effect.promise(() => fetch(`${base}/hello`).then((response) => response.text()))
  yield* Console.log(`GET /hello → ${hello}`)
  const models = yield* Effect.promise(() => fetch(`${base}/llm/v1/models`).then((response) => response.json()))
  yield* Console.log(`GET /llm/v1/models → ${JSON.stringify(models)}`)
  const completion = yield* Effect.promise(() =>
    fetch(`${base}/llm/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "demo", messages: [{ role: "user", content: "Hello!" }], max_tokens: 12, seed: 1 })
    }).then((response) => response.json() as Promise<{ choices: Array<{ message: { content: string } }> }>)
  )
  yield* Console.log(`POST /llm/v1/chat/completions → ${JSON.stringify(completion.choices[0]?.message.content)}`)
  if (process.env["KEEP_SERVING"] === "1") yield* Effect.never
})

Effect.runPromise(Effect.provide(demo, Server))
