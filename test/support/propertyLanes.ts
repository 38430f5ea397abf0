import { Effect, FastCheck as fc, TestContext } from "effect"

/**
 * `numRuns` cases of an Effect property in `lanes` independent `fc.assert`s at once, each with its own seed, each case
 * on a TestContext of its own. For properties whose cases spend most of their wall time idle in `TestClock.adjust`
 * (it waits on real timers to see every fiber suspended), so that cases overlap. Every lane runs to its end before
 * the first failure, if any, is reported, with its seed and shrunk counterexample.
 */
export const assertInLanes = async <A>(
  arbitrary: fc.Arbitrary<A>,
  property: (value: A) => Effect.Effect<unknown, unknown>,
  options: { readonly numRuns: number; readonly lanes: number }
): Promise<void> => {
  const settled = await Promise.allSettled(
    Array.from({ length: options.lanes }, (_, lane) =>
      fc.assert(
        fc.asyncProperty(arbitrary, (value) => Effect.runPromise(Effect.asVoid(property(value)).pipe(Effect.provide(TestContext.TestContext)))),
        // The runs split as evenly as they go: a remainder goes to the first lanes.
        { numRuns: Math.floor(options.numRuns / options.lanes) + (lane < options.numRuns % options.lanes ? 1 : 0) }
      ))
  )
  const failed = settled.find((result) => result.status === "rejected")
  if (failed !== undefined) throw failed.reason
}
