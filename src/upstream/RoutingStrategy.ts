import { Hash } from "effect"
import type { routingStrategies } from "../config/ModelsConfig.js"

export type RoutingStrategy = (typeof routingStrategies)[number]

/** A deployment that may take a request now, as a strategy sees it. */
export interface Candidate {
  /** The deployment's place in its model's list. */
  readonly index: number
  readonly name: string
  readonly weight: number
  /** Requests in flight (a local deployment's running and queued ones). */
  readonly inFlight: number
  /** Requests routed to it so far. */
  readonly picked: number
  /** EWMA of its time to first byte; undefined before its first answer. */
  readonly latencyMs: number | undefined
}

const byLeast = <A>(candidates: ReadonlyArray<A>, ...keys: ReadonlyArray<(candidate: A) => number>): A | undefined =>
  candidates.reduce<A | undefined>((best, candidate) => {
    if (best === undefined) return candidate
    for (const key of keys) {
      const difference = key(candidate) - key(best)
      if (difference !== 0) return difference < 0 ? candidate : best
    }
    return best
  }, undefined)

/** Weighted round-robin: the candidate whose share of requests so far is furthest below its weight. */
const served = (candidate: Candidate) => (candidate.picked + 1) / candidate.weight
const position = (candidate: Candidate) => candidate.index

/** A stable score of a session key on a deployment (rendezvous hashing: the key stays put while its deployment does). */
const affinityScore = (key: string, candidate: Candidate) => Hash.string(`${key}\u0000${candidate.name}`)

/**
 * The deployment a request goes to among `candidates` (those whose breaker admits it and that are not saturated).
 * `lowest-latency` tries an unmeasured deployment first; `session-affinity` without a key is round-robin.
 */
export const pickDeployment = (
  strategy: RoutingStrategy,
  candidates: ReadonlyArray<Candidate>,
  affinityKey: string | undefined
): Candidate | undefined => {
  switch (strategy) {
    case "round-robin":
      return byLeast(candidates, served, position)
    case "least-busy":
      return byLeast(candidates, (candidate) => candidate.inFlight / candidate.weight, served, position)
    case "lowest-latency":
      return byLeast(candidates, (candidate) => candidate.latencyMs ?? 0, (candidate) => candidate.inFlight, served, position)
    case "session-affinity":
      return affinityKey === undefined
        ? byLeast(candidates, served, position)
        : byLeast(candidates, (candidate) => -affinityScore(affinityKey, candidate), position)
  }
}

/** The next EWMA of a latency (α = 0.3: recent answers weigh more, one outlier does not swing it). */
export const nextEwma = (previous: number | undefined, sample: number): number =>
  previous === undefined ? sample : 0.3 * sample + 0.7 * previous
