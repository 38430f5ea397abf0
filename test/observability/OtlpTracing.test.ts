import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Option } from "effect"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { OtlpTracing, otlpSettingsFromEnv } from "../../src/observability/OtlpTracing.js"

const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

/** A stand-in OTLP/HTTP collector on a free local port, keeping each request's path and body. */
const collector = Effect.acquireRelease(
  Effect.async<{ readonly url: string; readonly received: Array<{ path: string; body: string }>; readonly server: Http.Server }>((resume) => {
    const received: Array<{ path: string; body: string }> = []
    const server = Http.createServer((request, response) => {
      let body = ""
      request.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")))
      request.on("end", () => {
        received.push({ path: request.url ?? "", body })
        response.writeHead(200, { "content-type": "application/json" }).end("{}")
      })
    })
    server.listen(0, "127.0.0.1", () =>
      resume(Effect.succeed({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, received, server })))
  }),
  ({ server }) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
)

describe("OTLP tracing", () => {
  it.effect("is off unless an endpoint is set; reads the standard OTEL_* variables", () =>
    Effect.gen(function*() {
      expect(Option.isNone(yield* otlpSettingsFromEnv.pipe(withEnv({})))).toBe(true)
      const base = yield* otlpSettingsFromEnv.pipe(withEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/" }))
      expect(base).toEqual(Option.some({ url: "http://collector:4318/v1/traces", protocol: "http/protobuf", headers: {}, serviceName: "weft" }))
      const full = yield* otlpSettingsFromEnv.pipe(withEnv({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://ignored:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://traces.example/v1/traces",
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
        OTEL_EXPORTER_OTLP_HEADERS: "x-tenant=a%20b,authorization=Bearer t",
        OTEL_SERVICE_NAME: "weft-eu"
      }))
      expect(full).toEqual(Option.some({
        url: "https://traces.example/v1/traces",
        protocol: "http/json",
        headers: { "x-tenant": "a b", authorization: "Bearer t" },
        serviceName: "weft-eu"
      }))
    }))

  it.live("exports finished spans to the configured endpoint over OTLP/HTTP", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const { received, url } = yield* collector
        const settings = { url: `${url}/v1/traces`, protocol: "http/json" as const, headers: {}, serviceName: "weft-test" }
        // The layer's scope closes when the provided effect ends, which flushes what the exporter buffered.
        yield* Effect.void.pipe(
          Effect.withSpan("weft.test.child"),
          Effect.withSpan("weft.test.parent"),
          Effect.provide(OtlpTracing.layer(settings))
        )
        expect(received.length).toBeGreaterThan(0)
        expect(received[0]!.path).toBe("/v1/traces")
        const body = received.map((request) => request.body).join("\n")
        expect(body).toContain("weft.test.parent")
        expect(body).toContain("weft.test.child")
        expect(body).toContain("weft-test")
      })
    ))
})
