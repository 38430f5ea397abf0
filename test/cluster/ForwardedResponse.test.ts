import { describe, expect, it } from "@effect/vitest"
import { HttpServerResponse } from "@effect/platform"
import { Cause, Chunk, Effect, Fiber, FiberId, Option, Stream, TestClock } from "effect"
import { ReplicaUnavailable } from "../../src/cluster/ClusterErrors.js"
import { forwardedResponse, ResponseBytes, ResponseHead } from "../../src/cluster/ForwardedResponse.js"
import type { ForwardedChunk } from "../../src/cluster/ForwardedResponse.js"
import { lessBusyPeer, peerFor } from "../../src/cluster/ReplicaLoad.js"

const sseHead = new ResponseHead({ status: 200, headers: { "content-type": "text/event-stream", "x-session-id": "s" } })
const jsonHead = new ResponseHead({ status: 200, headers: { "content-type": "application/json" } })
const bytes = (text: string) => new ResponseBytes({ bytes: new TextEncoder().encode(text) })

const bodyText = (response: HttpServerResponse.HttpServerResponse) =>
  Effect.gen(function*() {
    const body = response.body
    if (body._tag === "Uint8Array") return new TextDecoder().decode(body.body)
    if (body._tag !== "Stream") return ""
    const parts = yield* Stream.runCollect(body.stream)
    return Chunk.toReadonlyArray(parts).map((part) => new TextDecoder().decode(part as Uint8Array)).join("")
  })

describe("forwardedResponse", () => {
  it.scoped("relays the owner's status, headers and event stream", () =>
    Effect.gen(function*() {
      const chunks = Stream.fromIterable<ForwardedChunk>([sseHead, bytes("data: a\n\n"), bytes("data: [DONE]\n\n")])
      const response = yield* forwardedResponse(chunks, "30 seconds")
      expect(response.status).toBe(200)
      expect(response.headers["x-session-id"]).toBe("s")
      expect(yield* bodyText(response)).toBe("data: a\n\ndata: [DONE]\n\n")
    }))

  it.scoped("answers 503 when the owner sends nothing for the silence limit (it died before answering)", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.flip(forwardedResponse(Stream.never, "30 seconds")))
      yield* TestClock.adjust("30 seconds")
      expect(yield* Fiber.join(fiber)).toBeInstanceOf(ReplicaUnavailable)
    }))

  it.scoped("ends a started event stream with an in-band error when the turn starts over elsewhere (its owner died)", () =>
    Effect.gen(function*() {
      const chunks = Stream.fromIterable<ForwardedChunk>([sseHead, bytes("data: a\n\n"), sseHead, bytes("data: b\n\n")])
      const text = yield* bodyText(yield* forwardedResponse(chunks, "30 seconds"))
      expect(text.startsWith("data: a\n\ndata: {\"error\":")).toBe(true)
      expect(text).toContain("\"code\":\"replica_unavailable\"")
      expect(text).not.toContain("data: b")
      expect(text.split("\"error\"").length).toBe(2)
    }))

  it.scoped("ends an event stream that the owner stops short (interrupted at its shutdown) with an in-band error", () =>
    Effect.gen(function*() {
      const chunks = Stream.concat(Stream.fromIterable<ForwardedChunk>([sseHead, bytes("data: a\n\n")]), Stream.failCause(Cause.interrupt(FiberId.none)))
      const text = yield* bodyText(yield* forwardedResponse(chunks, "30 seconds"))
      expect(text.startsWith("data: a\n\ndata: {\"error\":")).toBe(true)
      const ended = yield* bodyText(yield* forwardedResponse(Stream.fromIterable<ForwardedChunk>([sseHead, bytes("data: a\n\n")]), "30 seconds"))
      expect(ended).toContain("\"code\":\"replica_unavailable\"")
    }))

  it.scoped("answers 503 rather than half a JSON body when the owner's connection breaks mid-body", () =>
    Effect.gen(function*() {
      const chunks = Stream.concat(Stream.fromIterable<ForwardedChunk>([jsonHead, bytes("{\"id\":")]), Stream.die(new Error("socket closed")))
      expect(yield* Effect.flip(forwardedResponse(chunks, "30 seconds"))).toBeInstanceOf(ReplicaUnavailable)
    }))
})

describe("lessBusyPeer and peerFor", () => {
  const peer = (replica: string, queued: number, free: number, models: ReadonlyArray<string> = ["tiny"]) => ({ replica, url: `http://${replica}`, queued, free, models })

  it("keeps a request here unless a peer is less busy, and then picks the least busy", () => {
    expect(lessBusyPeer({ queued: 0, free: 2 }, [peer("a", 0, 2), peer("b", 0, 1)])).toEqual(Option.none())
    expect(lessBusyPeer({ queued: 3, free: 0 }, [peer("a", 1, 0), peer("b", 0, 2)])).toEqual(Option.some(peer("b", 0, 2)))
    expect(lessBusyPeer({ queued: 0, free: 0 }, [])).toEqual(Option.none())
  })

  it("sends a request for a model this replica does not serve to the least busy replica that does, however busy", () => {
    const tuned = "ft:tiny:x:ftjob-1"
    const holders = [peer("a", 5, 0, ["tiny", tuned]), peer("b", 2, 0, ["tiny", tuned]), peer("c", 0, 4)]
    expect(peerFor(tuned, { queued: 0, free: 2 }, ["tiny"], holders)).toEqual(Option.some(holders[1]))
    // Nowhere in the cluster: served here, which answers 404.
    expect(peerFor("other", { queued: 0, free: 2 }, ["tiny"], holders)).toEqual(Option.none())
  })

  it("spreads a model this replica serves only to less busy replicas that serve it too", () => {
    const peers = [peer("a", 0, 4, ["other"]), peer("b", 0, 1, ["tiny"])]
    expect(peerFor("tiny", { queued: 2, free: 0 }, ["tiny"], peers)).toEqual(Option.some(peers[1]))
    expect(peerFor("tiny", { queued: 0, free: 2 }, ["tiny"], peers)).toEqual(Option.none())
    // An adapter on a model: where the model is.
    expect(peerFor("other:style", { queued: 0, free: 2 }, ["tiny"], peers)).toEqual(Option.some(peers[0]))
    // No model named: the default, spread by load alone.
    expect(peerFor(undefined, { queued: 2, free: 0 }, ["tiny"], peers)).toEqual(Option.some(peers[0]))
  })
})
