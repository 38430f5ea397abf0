import { BaseSequencer, type TestSpecification } from "vitest/node"
import { defineConfig } from "vitest/config"

/**
 * Files that run after all others. `layer(…, { excludeTestServices: true })` (the real-model engine tests) leaves
 * the live clock behind for later files of the same process, so those come last.
 */
const runLast = ["test/engine/PrefixCache.test.ts", "test/engine/llama/LlamaBackend.test.ts"]

class RunLastSequencer extends BaseSequencer {
  override async sort(files: Array<TestSpecification>): Promise<Array<TestSpecification>> {
    const sorted = await super.sort(files)
    const last = (file: TestSpecification) => runLast.some((name) => file.moduleId.endsWith(name))
    return [...sorted.filter((file) => !last(file)), ...sorted.filter(last)]
  }
}

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
    sequence: { sequencer: RunLastSequencer }
  }
})
