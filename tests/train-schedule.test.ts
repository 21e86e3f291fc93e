/**
 * The LR schedule (src/train/schedule.ts) against upstream MiniMind's `get_lr`, imported from
 * ../shared/data/minimind-src/trainer/trainer_utils.py (never copied), over a grid of steps k,
 * totals K and peak rates; with warmup W the cosine part is upstream's get_lr(k − W, K − W); and
 * the edge cases schedule.ts defines (k = 0, k > K, K ≤ 0).
 */
import { describe, expect, test } from "bun:test"
import { cosineLr } from "../src/train/schedule.ts"
import { repo, shared } from "./helpers/cli.ts"

const src = `${shared}/minimind-src`

/** Upstream's get_lr(k, K, lr) for each case, computed by upstream's own function. */
function upstreamLr(cases: [number, number, number][]): number[] {
  const code = `import sys, json; sys.path.insert(0, ${JSON.stringify(src)})
from trainer.trainer_utils import get_lr
print(json.dumps([get_lr(k, K, lr) for k, K, lr in json.loads(sys.stdin.read())]))`
  const p = Bun.spawnSync(["python3", "-c", code], { cwd: repo, stdin: new TextEncoder().encode(JSON.stringify(cases)), env: { ...process.env, OMP_NUM_THREADS: "1" } })
  if (p.exitCode !== 0) throw new Error(`upstream get_lr failed: ${p.stderr.toString().slice(-2000)}`)
  return JSON.parse(p.stdout.toString()) as number[]
}

const relGap = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-300)
const LRS = [1, 1e-3, 5e-4, 1e-5, 4e-8]
const TOTALS = [1, 2, 3, 7, 10, 64, 1001]

describe("cosineLr is upstream's get_lr", () => {
  // Upstream's rate for every k = 0..K (and a sample of long runs), every K, every lr.
  const plain: [number, number, number][] = []
  for (const K of TOTALS) for (const lr of LRS) for (let k = 0; k <= K; k += Math.max(1, Math.floor(K / 37))) plain.push([k, K, lr])
  // With warmup W: after the ramp, upstream's get_lr(k − W, K − W, lr).
  const warm: [number, number, number, number][] = []
  for (const [K, W] of [[10, 3], [64, 8], [1001, 100], [2, 1]] as const) for (const lr of LRS) for (let k = W + 1; k <= K; k += Math.max(1, Math.floor(K / 29))) warm.push([k, K, lr, W])
  const want = upstreamLr([...plain, ...warm.map(([k, K, lr, W]) => [k - W, K - W, lr] as [number, number, number])])

  test(`no warmup: ${plain.length} (k, K, lr) cases within 1e-14`, () => {
    const bad = plain.filter(([k, K, lr], i) => !(relGap(cosineLr(k, K, lr), want[i]!) < 1e-14))
    expect(bad).toEqual([])
    // the anchors: lr at k = 0, a little less at k = 1, lr/10 at k = K
    expect(cosineLr(0, 10, 5e-4)).toBe(5e-4)
    expect(cosineLr(1, 10, 5e-4)).toBeLessThan(5e-4)
    expect(relGap(cosineLr(10, 10, 5e-4), 5e-5)).toBeLessThan(1e-14)
  })

  test(`warmup W: linear ramp to lr, then get_lr(k − W, K − W, lr) (${warm.length} cases)`, () => {
    const bad = warm.filter(([k, K, lr, W], i) => !(relGap(cosineLr(k, K, lr, W), want[plain.length + i]!) < 1e-14))
    expect(bad).toEqual([])
    for (let k = 1; k <= 4; k++) expect(cosineLr(k, 100, 1e-3, 4)).toBeCloseTo((1e-3 * k) / 4, 18)
    expect(cosineLr(4, 100, 1e-3, 4)).toBe(1e-3)
  })

  test("edge cases: step 0, past the end, K ≤ 0, warmup ≥ K, another floor", () => {
    // k = 0 (before the first update): upstream's lr without warmup, the start of the ramp with it
    expect(cosineLr(0, 10, 1e-3)).toBe(1e-3)
    expect(cosineLr(0, 10, 1e-3, 5)).toBe(0)
    expect(cosineLr(-3, 10, 1e-3, 5)).toBe(0)
    expect(cosineLr(-3, 10, 1e-3)).toBe(1e-3)
    // past K: the floor
    expect(relGap(cosineLr(11, 10, 1e-3), 1e-4)).toBeLessThan(1e-14)
    expect(relGap(cosineLr(500, 10, 1e-3, 2), 1e-4)).toBeLessThan(1e-14)
    // K ≤ 0: nothing to schedule, constant lr (with or without warmup)
    for (const K of [0, -1]) for (const k of [0, 1, 5]) for (const W of [0, 3]) expect(cosineLr(k, K, 1e-3, W)).toBe(1e-3)
    // W ≥ K: every update on the ramp
    expect(cosineLr(5, 5, 1e-3, 10)).toBeCloseTo(5e-4, 18)
    // another floor ratio
    expect(Math.abs(cosineLr(10, 10, 1e-3, 0, 0))).toBeLessThan(1e-18)
    expect(relGap(cosineLr(5, 10, 1e-3, 0, 0.2), 1e-3 * (0.2 + 0.4))).toBeLessThan(1e-14)
  })
})
