import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Real-model tests load llama.cpp with threads = cores; running files in parallel would oversubscribe 2 cores.
    fileParallelism: false,
    pool: "forks",
    // Test files share one process: Effect, the platform and node-llama-cpp are imported once, not once per file
    // (about a minute and a half of the suite).
    isolate: false,
    // @effect/vitest's `layer` rebinds the `it` every file shares; each file gets the original methods back.
    setupFiles: ["test/support/effectItPerFile.ts"]
  }
})
