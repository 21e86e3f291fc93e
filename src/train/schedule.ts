/**
 * MiniMind's learning-rate schedule: cosine from `lr` down to `minRatio·lr` over the run
 * (upstream `get_lr`: lr·(0.1 + 0.45·(1 + cos(π·step/total)))), with optional linear warmup
 * (the seed v1's) after which the cosine runs over the remaining steps.
 */
export function cosineLr(step: number, total: number, lr: number, warmup = 0, minRatio = 0.1): number {
  if (total <= 0) return lr
  if (warmup > 0 && step < warmup) return (lr * (step + 1)) / warmup
  const span = Math.max(1, total - warmup)
  const p = Math.min(1, Math.max(0, (step - warmup) / span))
  return lr * (minRatio + ((1 - minRatio) / 2) * (1 + Math.cos(Math.PI * p)))
}
