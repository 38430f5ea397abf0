import { describe, expect, it } from "vitest"
import { defaultSettings } from "../../src/config/WeftConfig.js"
import { servedModels } from "../../src/layers.js"

describe("servedModels", () => {
  it("serves each local deployment of the config file under its id, its requests waiting for it to load up to its queue timeout", () => {
    const models = servedModels({
      ...defaultSettings,
      timeoutQueueMs: 30_000,
      models: {
        chat: { deployments: [{ gguf: "/models/chat.gguf", timeoutQueueMs: 5_000 }] },
        small: { deployments: [{ gguf: "/models/small.gguf" }] }
      }
    })
    expect(models.map((model) => [model.id, model.loadWaitMs])).toEqual([["chat", 5_000], ["small", 30_000]])
  })
})
