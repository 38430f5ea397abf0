import { NodeContext } from "@effect/platform-node"
import { Effect, Either } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { addonPatchesDirectory, addonPatchNames, applyAddonPatches, gitApply } from "../../src/cli/BuildNativeCommand.js"
import { nodeLlamaCppRoot } from "../../src/engine/llama/LlamaBinary.js"

const apply = (addon: string, patches?: string) =>
  Effect.runPromise(Effect.either(applyAddonPatches(addon, patches)).pipe(Effect.provide(NodeContext.layer)))

/**
 * A copy of the installed node-llama-cpp's addon sources as the package ships them, to patch without touching
 * node_modules. Where `weft build-native` ran, the installed sources carry Weft's patches: the copy has them taken out.
 */
const addonCopy = async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-addon-"))
  fs.cpSync(path.join(nodeLlamaCppRoot(), "llama", "addon"), dir, { recursive: true })
  for (const name of addonPatchNames().reverse()) {
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
})
