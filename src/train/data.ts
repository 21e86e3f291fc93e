/**
 * A stage's data: raw files → shards (prepared once per stage and reused), the deterministic
 * train/eval split, and the rows of each optimizer step as one contiguous batch.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { Effect } from "effect"
import { openShards, pairSequences, prepareShards, type Batch, type ShardSet } from "../data/index.ts"
import { shuffle } from "../util/rng.ts"
import { StageError, type StageOptions } from "./options.ts"
import { STAGES } from "./stages.ts"

/** What the stage's data preparation counted (read back from index.json when shards are reused). */
export interface StageData {
  readonly dir: string
  readonly skipped: number
  readonly unlabeled: number
}

const countsOf = (dir: string): StageData => {
  let index: { skipped?: unknown; unlabeled?: unknown } = {}
  try {
    index = JSON.parse(readFileSync(join(dir, "index.json"), "utf8"))
  } catch {
    // openShards reports an unreadable index
  }
  const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : 0)
  return { dir, skipped: n(index.skipped), unlabeled: n(index.unlabeled) }
}

/** Prepares (or reuses) the stage's shards. A directory with index.json is used as is. */
const stageShards = (o: StageOptions, stageDir: string) =>
  Effect.gen(function* () {
    if (o.data.length === 1 && existsSync(join(o.data[0]!, "index.json"))) {
      return countsOf(o.data[0]!)
    }
    const dir = join(stageDir, "data")
    const unlabeled = o.skipUnlabeled ? "skip" : "keep"
    // layout 2: --seq-len N keeps N tokens per sample (layout 1 kept N + 1).
    const stamp = JSON.stringify({ data: o.data.map((d) => resolve(d)), tokenizer: resolve(o.tokenizer), seqLen: o.seqLen, layout: 2, augment: o.augment ?? null, pack: o.pack ?? false, unlabeled })
    const stampFile = join(stageDir, "data.stamp.json")
    if (existsSync(join(dir, "index.json")) && existsSync(stampFile) && readFileSync(stampFile, "utf8") === stamp) {
      return countsOf(dir)
    }
    const r = yield* prepareShards({
      input: [...o.data],
      tokenizer: o.tokenizer,
      kind: STAGES[o.stage].data,
      outDir: dir,
      // As upstream's max_seq_len: N tokens kept, N positions forwarded, N − 1 predicted (the last
      // position has no target, but it is routed: the MoE aux loss counts it, as upstream's does).
      maxLen: o.seqLen,
      pack: o.pack ?? false,
      onBadRecord: o.onBadRecord,
      unlabeled,
      augment: o.augment ?? { systemPromptP: 0, stripEmptyThinkP: 0 },
      log: !o.quiet,
      // Long pretraining documents are routinely cut to the sequence length: count, don't list.
      maxWarnings: o.stage === "pretrain" ? 3 : 20,
    })
    writeFileSync(stampFile, stamp)
    if (!o.quiet) console.error(`[${o.stage}] ${r.summary}`)
    return { dir, skipped: r.skipped, unlabeled: r.unlabeled } satisfies StageData
  })

/** Deterministic train/eval split of sample indices (the "split" stream of the seed). */
export function splitIndices(n: number, evalFraction: number, seed: number): { train: Uint32Array; eval: Uint32Array } {
  const nEval = evalFraction > 0 && n > 1 ? Math.max(1, Math.min(n - 1, Math.round(n * evalFraction))) : 0
  const order = shuffle(Uint32Array.from({ length: n }, (_, i) => i), seed, "split")
  return { eval: order.slice(0, nEval).sort(), train: order.slice(nEval).sort() }
}

/** The stage's shards (prepared once, then reused), opened, and the train/eval split; at least one batch to train on. */
export const openStageData = (o: StageOptions, stageDir: string) =>
  Effect.gen(function* () {
    const data = yield* stageShards(o, stageDir)
    const shards = yield* openShards(data.dir)
    const split = splitIndices(shards.numSamples, o.evalFraction, o.seed)
    if (split.train.length < o.batchSize) {
      return yield* Effect.fail(
        new StageError({ stage: o.stage, message: `only ${split.train.length} training samples, fewer than one batch of ${o.batchSize}: lower --batch-size or add data` }),
      )
    }
    return { data, shards, split }
  })

/**
 * The rows of one optimizer step, filled once into one contiguous batch, and the rows of each
 * micro-batch (what `bm_trainer_step_rows` splits them by). DPO: each micro-batch is its chosen
 * rows followed by its rejected rows.
 */
export function stepBatch(shards: ShardSet, o: Pick<StageOptions, "stage" | "seqLen">, micro: ReadonlyArray<ReadonlyArray<number>>): { batch: Batch; rows: number[] } {
  const pairs = STAGES[o.stage].data === "dpo"
  const seqs = pairs
    ? micro.flatMap((m) => {
        const p = pairSequences(m)
        return [...p.chosen, ...p.rejected]
      })
    : micro.flat()
  return { batch: shards.getSequences(seqs, o.seqLen), rows: micro.map((m) => (pairs ? 2 : 1) * m.length) }
}
