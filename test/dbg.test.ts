import { it } from "@effect/vitest"
import { Effect, Stream, Chunk, Layer, TestClock, TestContext, Fiber } from "effect"
import { SimBackend } from "../src/engine/SimBackend.js"
import { SeqPool } from "../src/engine/SeqPool.js"
import { defaultSampling } from "../src/engine/SamplingOptions.js"
import { RequestScheduler } from "../src/scheduler/RequestScheduler.js"
import { SchedulerConfig } from "../src/scheduler/SchedulerConfig.js"
it.live("dbg", () => Effect.gen(function*() {
  const layer = RequestScheduler.Default.pipe(Layer.provideMerge(SeqPool.Default), Layer.provide(SchedulerConfig.layer({shutdownGraceMs: 0})), Layer.provideMerge(SimBackend.layer({parallel: 2, contextSize: 64, tokenLatency: 5})))
  const prog = Effect.gen(function*() {
    const s = yield* RequestScheduler
    console.log("got scheduler")
    const f = yield* Effect.fork(s.submit({id: "a", prompt: [1,2,3], sampling: {...defaultSampling, seed: 1}, maxTokens: 5}).pipe(Stream.runCollect))
    for (let i = 0; i < 100; i++) { yield* TestClock.adjust(1) }
    console.log(f.unsafePoll())
    console.log(JSON.stringify(Chunk.toArray(yield* Fiber.join(f))))
  }).pipe(Effect.scoped, Effect.provide(layer), Effect.provide(TestContext.TestContext))
  yield* prog
  console.log("done")
}))
