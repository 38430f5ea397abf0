import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { decodeModelsConfig, localEngineId } from "../../src/config/ModelsConfig.js"

const errorOf = (raw: unknown) => Either.match(decodeModelsConfig(raw, "/etc/weft"), { onLeft: (message) => message, onRight: () => "decoded" })

const upstream = { url: "http://127.0.0.1:8081/v1", model: "llama" }

describe("ModelsConfig", () => {
  it("decodes local and upstream deployments, resolving GGUF paths against the config file's folder", () => {
    const decoded = decodeModelsConfig({
      chat: { deployments: [{ gguf: "models/a.gguf", parallel: 2 }, { ...upstream, apiKeyEnv: "UPSTREAM_KEY", pool: { connections: 8 } }], routing: "least-busy", fallbacks: ["small"] },
      small: { deployments: [{ gguf: "/abs/small.gguf" }] }
    }, "/etc/weft")
    expect(Either.getOrThrow(decoded)).toEqual({
      chat: {
        deployments: [{ gguf: "/etc/weft/models/a.gguf", parallel: 2 }, { ...upstream, apiKeyEnv: "UPSTREAM_KEY", pool: { connections: 8 } }],
        routing: "least-busy",
        fallbacks: ["small"]
      },
      small: { deployments: [{ gguf: "/abs/small.gguf" }] }
    })
  })

  it("names the path of the bad key", () => {
    expect(errorOf({ chat: { deployments: [{ gguf: "a.gguf" }, { ...upstream, url: "ftp://x" }] } })).toMatch(/^models\.chat\.deployments\[1\]\.url: an http/)
    expect(errorOf({ chat: { deployments: [{ gguf: "a.gguf", parallel: 0 }] } })).toMatch(/^models\.chat\.deployments\[0\]\.parallel: /)
    expect(errorOf({ chat: { deployments: [upstream], breaker: { failureRate: 2 } } })).toMatch(/^models\.chat\.breaker\.failureRate: /)
    expect(errorOf({ chat: { deployments: [upstream], routing: "random" } })).toMatch(/^models\.chat\.routing: /)
    expect(errorOf({ chat: { deployments: [] } })).toBe("models.chat.deployments: expected at least one deployment")
    expect(errorOf({ chat: { deployments: [{ ...upstream, poolSize: 3 }] } })).toMatch(/^models\.chat\.deployments\[0\]\.poolSize: /)
    expect(errorOf({ "a:b": { deployments: [upstream] } })).toMatch(/^models\.a:b: not a model id/)
    expect(errorOf({ chat: { deployments: [{ ...upstream, pool: { maxInFlight: 0 } }] } })).toMatch(/^models\.chat\.deployments\[0\]\.pool\.maxInFlight: /)
    expect(errorOf({ chat: { deployments: [{ ...upstream, name: "x" }] }, other: { deployments: [{ ...upstream, name: "x" }] } }))
      .toBe('models.other.deployments[0].name: "x" names another deployment already')
  })

  it("refuses an API key written in the file, and deployments that are neither or both kinds", () => {
    expect(errorOf({ chat: { deployments: [{ ...upstream, apiKey: "sk-secret" }] } })).toMatch(/^models\.chat\.deployments\[0\]\.apiKey: API keys are never written/)
    expect(errorOf({ chat: { deployments: [{ ...upstream, apiKey: "sk-secret" }] } })).not.toContain("sk-secret")
    expect(errorOf({ chat: { deployments: [{ model: "x" }] } })).toMatch(/expected "gguf" .* or "url"/)
    expect(errorOf({ chat: { deployments: [{ gguf: "a.gguf", ...upstream }] } })).toMatch(/not both/)
  })

  it("checks that fallbacks name other models of the file", () => {
    expect(errorOf({ chat: { deployments: [upstream], fallbacks: ["nope"] } })).toBe(`models.chat.fallbacks[0]: "nope" is not a model of this file`)
    expect(errorOf({ chat: { deployments: [upstream], fallbacks: ["chat"] } })).toBe("models.chat.fallbacks[0]: a model cannot fall back to itself")
  })

  it("registers a model's only local deployment under the model id, and several by name or index", () => {
    const decoded = Either.getOrThrow(decodeModelsConfig({
      one: { deployments: [{ gguf: "a.gguf" }] },
      two: { deployments: [{ gguf: "a.gguf" }, { gguf: "b.gguf", name: "b-copy" }] }
    }, "/"))
    expect(localEngineId("one", decoded.one!, 0)).toBe("one")
    expect(localEngineId("two", decoded.two!, 0)).toBe("two#0")
    expect(localEngineId("two", decoded.two!, 1)).toBe("b-copy")
  })
})

describe("ModelsConfig adapters", () => {
  it("resolves a local deployment's adapter paths against the config file's folder", () => {
    const decoded = decodeModelsConfig({ chat: { deployments: [{ gguf: "a.gguf", adapters: [{ name: "pirate", path: "loras/p.gguf", scale: 0.5 }, { name: "terse", path: "/abs/t.gguf" }] }] } }, "/etc/weft")
    expect(Either.getOrThrow(decoded).chat!.deployments[0]).toEqual({
      gguf: "/etc/weft/a.gguf",
      adapters: [{ name: "pirate", path: "/etc/weft/loras/p.gguf", scale: 0.5 }, { name: "terse", path: "/abs/t.gguf" }]
    })
  })

  it("names a bad adapter entry's key, and a name used twice", () => {
    expect(errorOf({ chat: { deployments: [{ gguf: "a.gguf", adapters: [{ name: "a:b", path: "x.gguf" }] }] } })).toMatch(/^models\.chat\.deployments\[0\]\.adapters\[0\]\.name: an adapter name/)
    expect(errorOf({ chat: { deployments: [{ gguf: "a.gguf", adapters: [{ name: "a", path: "x.gguf", scale: 1000 }] }] } })).toMatch(/^models\.chat\.deployments\[0\]\.adapters\[0\]\.scale: /)
    expect(errorOf({ chat: { deployments: [{ gguf: "a.gguf", adapters: [{ name: "a", path: "x.gguf" }, { name: "a", path: "y.gguf" }] }] } })).toBe('models.chat.deployments[0].adapters: the name "a" is used twice')
  })
})
