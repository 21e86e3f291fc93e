/**
 * The round-robin scheduler on a real (tiny, random) model: one token per active request per round,
 * a FIFO queue beyond `maxActive`, cancellation of queued and active requests, and native sessions
 * freed as requests leave (counted with the library's live-handle count). Each request's tokens must
 * equal what the same request produces alone, so interleaving never mixes sessions up.
 */
import { afterAll, beforeAll, expect, test } from "bun:test"
import { openSessionSync } from "../src/model/generate.ts"
import { openModelSync, type Model } from "../src/model/model.ts"
import { Scheduler } from "../src/serve/scheduler.ts"
import { makeTinyModel } from "./serve-fixture.ts"

let model: Model

beforeAll(() => {
  model = openModelSync(makeTinyModel())
}, 60_000)

afterAll(() => model?.free())

const prompt = (i: number) => Uint32Array.from([1, 100 + i, 200 + i, 300 + i])
const opts = (i: number, n: number) => ({ temperature: 1, topK: 0, topP: 1, seed: i, maxNewTokens: n, stopTokenIds: [] })

function alone(i: number, n: number): number[] {
  const s = openSessionSync(model, prompt(i), opts(i, n))
  const ids: number[] = []
  for (let t = s.next(); t !== undefined; t = s.finished ? undefined : s.next()) ids.push(t)
  s.free()
  return ids
}

test("round-robin: one token per active request per round, FIFO beyond maxActive, same tokens as alone", () => {
  const live = model.native.liveHandles()
  const s = new Scheduler(model, 2)
  const lengths = [3, 5, 4, 2]
  lengths.forEach((n, i) => s.submit({ id: i, prompt: prompt(i), options: opts(i, n) }))
  const got: number[][] = lengths.map(() => [])
  const rounds: number[][] = []
  const endedAt: number[] = []
  while (!s.idle) {
    const r = s.round()
    rounds.push(r.tokens.map(([id]) => id))
    for (const [id, t] of r.tokens) got[id]!.push(t)
    for (const e of r.ended) {
      expect(e.info?.finish_reason).toBe("length")
      endedAt[e.id] = rounds.length
    }
    expect(s.activeCount).toBeLessThanOrEqual(2)
    expect(model.native.liveHandles()).toBe(live + s.activeCount)
  }
  // Requests 0 and 1 run first; 2 starts when 0 finishes (after round 3), 3 when 1 finishes;
  // a newcomer takes the first turn of its first round.
  expect(rounds.slice(0, 3)).toEqual([[0, 1], [0, 1], [0, 1]])
  expect(rounds.slice(3, 6)).toEqual([[2, 1], [2, 1], [3, 2]])
  expect(endedAt).toEqual([3, 5, 7, 7])
  lengths.forEach((n, i) => expect(got[i]).toEqual(alone(i, n)))
  expect(model.native.liveHandles()).toBe(live)
})

test("step(): one token of one request at a time, taking turns", () => {
  const s = new Scheduler(model, 8)
  for (const i of [0, 1, 2]) s.submit({ id: i, prompt: prompt(i), options: opts(i, 2) })
  const order: number[] = []
  const got: number[][] = [[], [], []]
  while (!s.idle) {
    const r = s.step()
    expect(r.tokens.length).toBeLessThanOrEqual(1)
    for (const [id, t] of r.tokens) {
      order.push(id)
      got[id]!.push(t)
    }
  }
  expect(order).toEqual([0, 1, 2, 0, 1, 2])
  for (const i of [0, 1, 2]) expect(got[i]).toEqual(alone(i, 2))
})

test("cancelling a queued request drops it; cancelling an active one frees its session at the next round", () => {
  const live = model.native.liveHandles()
  const s = new Scheduler(model, 1)
  s.submit({ id: 1, prompt: prompt(1), options: opts(1, 50) })
  s.submit({ id: 2, prompt: prompt(2), options: opts(2, 50) })
  expect(s.round().tokens.map(([id]) => id)).toEqual([1])
  expect(model.native.liveHandles()).toBe(live + 1)
  s.cancel(2)
  s.cancel(1)
  const r = s.round()
  expect(r.tokens).toEqual([])
  expect(r.ended.map((e) => [e.id, e.cancelled])).toEqual([
    [2, true],
    [1, true],
  ])
  expect(s.idle).toBe(true)
  expect(model.native.liveHandles()).toBe(live)
})

test("a request the native side rejects ends with an error and does not stop the others", () => {
  const s = new Scheduler(model, 4)
  s.submit({ id: 1, prompt: Uint32Array.from([1, 999_999]), options: opts(1, 3) })
  s.submit({ id: 2, prompt: prompt(2), options: opts(2, 3) })
  const ended: Array<{ id: number; error?: string }> = []
  const tokens: number[] = []
  while (!s.idle) {
    const r = s.round()
    ended.push(...r.ended)
    tokens.push(...r.tokens.map(([id]) => id))
  }
  expect(ended.find((e) => e.id === 1)?.error).toContain("999999")
  expect(tokens).toEqual([2, 2, 2])
})
