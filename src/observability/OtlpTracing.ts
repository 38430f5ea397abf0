import { OtlpSerialization, OtlpTracer } from "@effect/opentelemetry"
import { FetchHttpClient } from "@effect/platform"
import { Config, Effect, Layer, Option } from "effect"

/** Where and how spans are exported, from the standard OpenTelemetry variables. */
export interface OtlpSettings {
  /** The full traces URL (`…/v1/traces`). */
  readonly url: string
  readonly protocol: "http/protobuf" | "http/json"
  readonly headers: Readonly<Record<string, string>>
  readonly serviceName: string
}

/** `k1=v1,k2=v2` with URL-encoded values, as `OTEL_EXPORTER_OTLP_HEADERS` spells it. */
const parseHeaders = (text: string): Record<string, string> => {
  const headers: Record<string, string> = {}
  for (const pair of text.split(",")) {
    const at = pair.indexOf("=")
    if (at <= 0) continue
    headers[pair.slice(0, at).trim().toLowerCase()] = decodeURIComponent(pair.slice(at + 1).trim())
  }
  return headers
}

/**
 * Reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (a full URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL, `/v1/traces`
 * appended), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` by default, or `http/json`), `OTEL_EXPORTER_OTLP_HEADERS`
 * and `OTEL_SERVICE_NAME` (default `weft`); `None` when no endpoint is set.
 */
export const otlpSettingsFromEnv: Effect.Effect<Option.Option<OtlpSettings>, never> = Effect.gen(function*() {
  const traces = yield* Config.option(Config.nonEmptyString("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
  const base = yield* Config.option(Config.nonEmptyString("OTEL_EXPORTER_OTLP_ENDPOINT"))
  const url = Option.isSome(traces)
    ? traces.value
    : Option.isSome(base)
    ? `${base.value.replace(/\/+$/, "")}/v1/traces`
    : undefined
  if (url === undefined) return Option.none()
  const protocol = yield* Config.literal("http/protobuf", "http/json")("OTEL_EXPORTER_OTLP_PROTOCOL").pipe(
    Config.withDefault("http/protobuf" as const)
  )
  const headers = yield* Config.string("OTEL_EXPORTER_OTLP_HEADERS").pipe(Config.map(parseHeaders), Config.withDefault({}))
  const serviceName = yield* Config.nonEmptyString("OTEL_SERVICE_NAME").pipe(Config.withDefault("weft"))
  return Option.some({ url, protocol, headers, serviceName })
}).pipe(Effect.orDie)

/** Exports every span over OTLP/HTTP when an endpoint is configured in the environment; otherwise does nothing. */
export const OtlpTracing = {
  layer: (settings: OtlpSettings, serviceVersion?: string): Layer.Layer<never> =>
    OtlpTracer.layer({
      url: settings.url,
      headers: settings.headers,
      resource: { serviceName: settings.serviceName, serviceVersion }
    }).pipe(
      Layer.provide(settings.protocol === "http/json" ? OtlpSerialization.layerJson : OtlpSerialization.layerProtobuf),
      Layer.provide(FetchHttpClient.layer)
    ),
  fromEnv: (serviceVersion?: string): Layer.Layer<never> =>
    Layer.unwrapEffect(
      Effect.map(otlpSettingsFromEnv, Option.match({
        onNone: () => Layer.empty,
        onSome: (settings) => OtlpTracing.layer(settings, serviceVersion)
      }))
    )
}
