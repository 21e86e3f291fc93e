/** A stage's held-out loss, on the first `evalBatches × batchSize` held-out samples. */
import type { Batch, ShardSet } from "../data/index.ts"
import type { Model } from "../model/model.ts"
import type { Trainer } from "../model/trainer.ts"
import type { StageOptions } from "./options.ts"

export interface EvalSet {
  readonly shards: ShardSet
  readonly eval: Uint32Array
}

/** Masked cross-entropy of the trainer's live weights: one token mean over the held-out rows. */
const lmLoss = (o: StageOptions, d: EvalSet, trainer: Trainer): number | undefined => {
  if (d.eval.length === 0) return undefined
  let sum = 0
  let count = 0
  const n = Math.min(d.eval.length, o.evalBatches * o.batchSize)
  for (let i = 0; i < n; i += o.batchSize) {
    const idx = d.eval.subarray(i, Math.min(n, i + o.batchSize))
    const r = trainer.eval(d.shards.getBatch(idx, o.seqLen), idx.length)
    sum += r.sum
    count += r.count
  }
  return count ? sum / count : undefined
}

/**
 * DPO's held-out loss: −log σ(β·((πc − πr) − (rc − rr))) on held-out pairs, from summed masked
 * log-probs of the live policy and the frozen reference (one row at a time).
 */
const dpoLoss = (o: StageOptions, d: EvalSet, live: Model, reference: Model, beta: number): number | undefined => {
  if (d.eval.length === 0) return undefined
  const n = Math.min(d.eval.length, o.evalBatches * o.batchSize)
  const lp = (m: Model, b: Batch) => -m.loss(b.ids, b.targets, b.mask, 1).sum
  let total = 0
  for (let i = 0; i < n; i++) {
    const { chosen, rejected } = d.shards.getPairBatch([d.eval[i]!], o.seqLen)
    const z = beta * (lp(live, chosen) - lp(live, rejected) - (lp(reference, chosen) - lp(reference, rejected)))
    total += Math.log1p(Math.exp(-Math.abs(z))) + Math.max(-z, 0)
  }
  return total / n
}

/** The stage's held-out loss function (undefined when nothing is held out). DPO needs the live policy and the reference. */
export const stageEval =
  (o: StageOptions, d: EvalSet, trainer: Trainer, dpo?: { live: Model; reference: Model }) =>
  (): number | undefined => {
    if (o.objective.kind === "dpo") return dpo ? dpoLoss(o, d, dpo.live, dpo.reference, o.objective.beta) : undefined
    return lmLoss(o, d, trainer)
  }
