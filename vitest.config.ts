import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Real-model tests load llama.cpp with threads = cores; running files in parallel would oversubscribe 2 cores.
    fileParallelism: false,
    pool: "forks"
  }
})
