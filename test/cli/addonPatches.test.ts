import { NodeContext } from "@effect/platform-node"
import { Effect, Either } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { execFileSync } from "node:child_process"
import { addonPatchesDirectory, applyPatches, gitApply, llamaCppPatchesDirectory, patchNames } from "../../src/cli/BuildNativeCommand.js"
import { nodeLlamaCppRoot } from "../../src/engine/llama/LlamaBinary.js"

const apply = (sources: string, patches: string = addonPatchesDirectory()) =>
  Effect.runPromise(Effect.either(applyPatches(sources, patches)).pipe(Effect.provide(NodeContext.layer)))

/**
 * A copy of the installed node-llama-cpp's addon sources as the package ships them, to patch without touching
 * node_modules. Where `weft build-native` ran, the installed sources carry Weft's patches: the copy has them taken out.
 */
const addonCopy = async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-addon-"))
  fs.cpSync(path.join(nodeLlamaCppRoot(), "llama", "addon"), dir, { recursive: true })
  for (const name of patchNames(addonPatchesDirectory()).reverse()) {
    const file = path.join(addonPatchesDirectory(), name)
    await Effect.runPromise(Effect.gen(function*() {
      if ((yield* gitApply(dir, ["--reverse", "--check", file])) === 0) expect(yield* gitApply(dir, ["--reverse", file])).toBe(0)
    }).pipe(Effect.provide(NodeContext.layer)))
  }
  return dir
}

describe("weft build-native's addon patches", () => {
  it("Weft's patches apply to the installed node-llama-cpp's addon, once: a second run finds them applied", async () => {
    const addon = await addonCopy()
    const shipped = fs.readdirSync(addonPatchesDirectory()).filter((name) => name.endsWith(".patch")).sort()
    expect(shipped.length).toBeGreaterThan(0)

    const first = await apply(addon)
    expect(first).toEqual(Either.right({ patches: shipped, applied: shipped }))
    const context = fs.readFileSync(path.join(addon, "AddonContext.cpp"), "utf8")
    expect(context).toContain("llama_attach_threadpool(ctx, threadpool, threadpool)")
    expect(context).toContain("threadpoolFree(currentThreadpool)")

    const second = await apply(addon)
    expect(second).toEqual(Either.right({ patches: shipped, applied: [] }))
    expect(fs.readFileSync(path.join(addon, "AddonContext.cpp"), "utf8")).toBe(context)
  })

  it("a patch written for other sources fails the build with its name, and changes nothing", async () => {
    const addon = await addonCopy()
    const before = fs.readFileSync(path.join(addon, "AddonContext.cpp"), "utf8")
    const patches = fs.mkdtempSync(path.join(os.tmpdir(), "weft-patches-"))
    fs.writeFileSync(
      path.join(patches, "0001-other.patch"),
      [
        "diff --git a/AddonContext.cpp b/AddonContext.cpp",
        "--- a/AddonContext.cpp",
        "+++ b/AddonContext.cpp",
        "@@ -1,2 +1,3 @@",
        " #include <no-such-line>",
        "+#include <another>",
        " #include <nor-this-one>",
        ""
      ].join("\n")
    )
    const result = await apply(addon, patches)
    expect(Either.isLeft(result)).toBe(true)
    if (Either.isLeft(result)) {
      expect(result.left._tag).toBe("NativeBuildFailed")
      expect(result.left.message).toContain("0001-other.patch does not apply")
    }
    expect(fs.readFileSync(path.join(addon, "AddonContext.cpp"), "utf8")).toBe(before)
  })

  it("without a patches folder there is nothing to apply", async () => {
    const addon = await addonCopy()
    expect(await apply(addon, path.join(addon, "no-patches-here"))).toEqual(Either.right({ patches: [], applied: [] }))
  })

  it("Weft's llama.cpp patch applies to the source node-llama-cpp ships (its git bundle), once", async () => {
    // What `source download --skipBuild` clones, as far as the patches reach: ggml's sources, from the bundle.
    const source = fs.mkdtempSync(path.join(os.tmpdir(), "weft-llama-cpp-"))
    const git = (...args: Array<string>) => execFileSync("git", args, { cwd: source, stdio: "pipe" })
    git("init", "-q")
    git("fetch", "-q", path.join(nodeLlamaCppRoot(), "llama", "gitRelease.bundle"))
    git("checkout", "-q", "FETCH_HEAD", "--", "ggml/src")
    const shipped = patchNames(llamaCppPatchesDirectory())
    expect(shipped).toEqual(["0001-huge-pages-for-large-buffers.patch"])

    expect(await apply(source, llamaCppPatchesDirectory())).toEqual(Either.right({ patches: shipped, applied: shipped }))
    const ggml = fs.readFileSync(path.join(source, "ggml", "src", "ggml.c"), "utf8")
    expect(ggml).toContain("madvise(aligned_memory, size, MADV_HUGEPAGE)")

    expect(await apply(source, llamaCppPatchesDirectory())).toEqual(Either.right({ patches: shipped, applied: [] }))
    expect(fs.readFileSync(path.join(source, "ggml", "src", "ggml.c"), "utf8")).toBe(ggml)
  })
})
