// A vitest setup file: it runs before each test file, in the one process all files share (`isolate: false`).
//
// @effect/vitest's `layer(…)(it => …)` hands its tests `Object.assign(it, { effect, scoped, layer, … })`, where `it`
// is vitest's own `it`, the one every file imports: from then on every later file's `it.effect` ran inside that file's
// layer, closed by then, on its one TestClock (a file after one that had advanced it by 5 s started its tests at
// 5 s: a TTL test of the session store failed, depending on the order vitest picked) or, with
// `excludeTestServices`, on the live clock. Each file starts with the methods @effect/vitest first made.
import { it } from "@effect/vitest"

type Methods = Pick<typeof it, "effect" | "scoped" | "layer" | "prop" | "flakyTest">

const key = Symbol.for("weft.test.effectItMethods")
const shared = globalThis as { [key]?: Methods }
shared[key] ??= { effect: it.effect, scoped: it.scoped, layer: it.layer, prop: it.prop, flakyTest: it.flakyTest }
Object.assign(it, shared[key])
