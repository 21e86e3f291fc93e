/**
 * The learning-rate schedule of every stage (the only one: the engine takes the rate per step):
 * MiniMind's cosine from `lr` down to `minRatio·lr`.
 *
 * Upstream (`trainer/trainer_utils.py::get_lr`) is `lr·(0.1 + 0.45·(1 + cos(π·k/K)))`, called
 * before every micro-batch `k = 1..K` (K = epochs × micro-batches per epoch, the short last batch
 * of an epoch included), so the first update already uses a little less than `lr` and the last
 * one exactly `lr/10`. An optimizer step uses the rate set for its last micro-batch. bunmind sets
 * the rate once per optimizer step from the same `k` (the micro-batches done at the end of the
 * step) and the same `K`: the rates of the updates are upstream's, whatever `--accum` is.
 *
 * `warmup` (the seed v1's, upstream has none) ramps linearly, `lr·k/warmup` for `k ≤ warmup`,
 * then the cosine runs over the remaining `K − warmup`: `cosineLr(k, K, lr, W)` is upstream's
 * `get_lr(k − W, K − W, lr)` after the ramp.
 *
 * Edge cases (tests/train-schedule.test.ts):
 * - `k ≤ 0` (before the first update; the loop's clock starts at 1) is step 0: `lr` without warmup
 *   (upstream's `get_lr(0, K, lr)`), 0 with warmup (the ramp starts at 0; update 1 gets `lr/W`).
 * - `k > K` stays at the floor `minRatio·lr`.
 * - `K ≤ 0` (no clock: nothing to schedule) gives the constant `lr`, warmup or not.
 * - `W ≥ K`: every update is on the ramp.
 */
export function cosineLr(k: number, total: number, lr: number, warmup = 0, minRatio = 0.1): number {
  if (total <= 0) return lr
  const step = Math.max(0, k)
  if (warmup > 0 && step <= warmup) return (lr * step) / warmup
  const span = Math.max(1, total - warmup)
  const p = Math.min(1, (step - warmup) / span)
  return lr * (minRatio + ((1 - minRatio) / 2) * (1 + Math.cos(Math.PI * p)))
}
