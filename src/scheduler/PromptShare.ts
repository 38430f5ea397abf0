import { Deferred, Effect, Option, Ref } from "effect"
import type { Scope } from "effect"

/** What a choice does with the shared prompt once it holds a slot. */
export type PromptShareRole =
  /** The first choice to hold a slot evaluates the prompt, and runs `prefilled` once it has. */
  | { readonly _tag: "Lead"; readonly prefilled: Effect.Effect<void> }
  /** The others copy the evaluated prompt's KV from the leader's slot (see `copyFromLeader`). */
  | { readonly _tag: "Follow" }

/**
 * The choices of one prompt (`n` > 1) share its evaluation: the first to hold a slot evaluates the prompt; each of the
 * others, holding a slot of its own, waits for that and copies the prompt's KV cells from the leader's slot instead of
 * evaluating them again. A copy runs only while the leader still holds its slot (its cells are then the prompt's,
 * followed by what it generated); a leader that ends before its prompt is in, or has let its slot go, leaves the
 * others to evaluate the prompt themselves.
 */
export class PromptShare {
  private constructor(
    /** Whether a choice has taken the lead. */
    private readonly led: Ref.Ref<boolean>,
    /** The leader's slot once its prompt is evaluated, or none if it ended before. */
    private readonly prefilled: Deferred.Deferred<Option.Option<number>>,
    /** The leader's slot while copies may read it; cleared (under `lock`) before the leader lets it go. */
    private readonly source: Ref.Ref<Option.Option<number>>,
    /** Held by each copy, and by the leader to clear `source`: no copy reads a slot its leader has let go. */
    private readonly lock: Effect.Semaphore
  ) {}

  static readonly make: Effect.Effect<PromptShare> = Effect.gen(function*() {
    return new PromptShare(
      yield* Ref.make(false),
      yield* Deferred.make<Option.Option<number>>(),
      yield* Ref.make(Option.none<number>()),
      yield* Effect.makeSemaphore(1)
    )
  })

  /**
   * Joins the share holding `slot`: the first to join leads. The leader's part ends with the current scope, which must
   * close before its slot is released (so no copy outlives the leader's hold on the slot).
   */
  readonly join = (slot: number): Effect.Effect<PromptShareRole, never, Scope.Scope> =>
    Effect.flatMap(Ref.getAndSet(this.led, true), (taken): Effect.Effect<PromptShareRole, never, Scope.Scope> => {
      if (taken) return Effect.succeed({ _tag: "Follow" })
      const prefilled = Effect.zipRight(Ref.set(this.source, Option.some(slot)), Deferred.succeed(this.prefilled, Option.some(slot)))
      return Effect.as(
        Effect.addFinalizer(() =>
          Effect.zipRight(
            Deferred.succeed(this.prefilled, Option.none()),
            this.lock.withPermits(1)(Ref.set(this.source, Option.none()))
          )
        ),
        { _tag: "Lead", prefilled: Effect.asVoid(prefilled) }
      )
    })

  /**
   * For a follower: waits until the leader's prompt is evaluated, then runs `copy` on the leader's slot while the
   * leader still holds it; none when the leader ended first or has let its slot go.
   */
  copyFromLeader<A, E>(copy: (slot: number) => Effect.Effect<A, E>): Effect.Effect<Option.Option<A>, E> {
    return Effect.flatMap(Deferred.await(this.prefilled), (prefilled) =>
      Option.isNone(prefilled)
        ? Effect.succeed(Option.none<A>())
        : this.lock.withPermits(1)(
          Effect.flatMap(Ref.get(this.source), (source) =>
            Option.isNone(source) ? Effect.succeed(Option.none<A>()) : Effect.map(copy(source.value), Option.some))
        ))
  }
}
