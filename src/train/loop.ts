/**
 * The loop every training stage shares. A stage is an Effect program:
 *
 *   data (raw files → shards, once) → model (init / load) → trainer (objective, LoRA)
 *   → for each step: `accum` micro-batches from a seeded, resumable sampler → native step at the
 *     cosine LR → metrics line + progress bar → eval every N → checkpoint every N
 *   → final checkpoint, published model, summary.json
 *
 * Native handles (tokenizer, models, trainer) are scoped. Interruption (Ctrl-C / SIGTERM) lands
 * between two steps (a native step is one synchronous call); the finalizer then writes a
 * checkpoint of the last completed step, so `--resume` continues with the same data order,
 * optimizer state and RNG, and reproduces the uninterrupted loss sequence exactly.
 */
import { publishHf } from "../export/hf.ts"
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { Data, Effect, Exit } from "effect"
import { BatchSampler, openShards, prepareShards, type AugmentOptions, type Batch, type DataKind, type SamplerState, type ShardSet } from "../data/index.ts"
import { ProgressBar, fmtNum } from "../cli/progress.ts"
import { initModel, loadModel, type Model } from "../model/model.ts"
import { openTrainer, type LoraOptions, type Objective, type StepResult, type Trainer } from "../model/trainer.ts"
import type { Device } from "../native/library.ts"
import { writeJsonAtomic as writeJson } from "../util/fs.ts"
import { launchStage } from "./launch.ts"
import { cosineLr } from "./schedule.ts"

export type StageName = "pretrain" | "sft" | "lora" | "dpo" | "distill"

export class StageError extends Data.TaggedError("StageError")<{ readonly stage: string; readonly message: string }> {}

export interface StageOptions {
  readonly stage: StageName
  /** The run directory (`runs/<name>`); the stage writes into `<runDir>/<stage>/`. */
  readonly runDir: string
  /** Raw dataset files (JSONL / CSV / Parquet / txt), or one prepared shard directory. */
  readonly data: ReadonlyArray<string>
  /** tokenizer.json or its directory (with tokenizer_config.json for chat data). */
  readonly tokenizer: string
  /** Start from scratch (`preset` + overrides) or from a model directory. */
  readonly init: { readonly preset: string; readonly overrides?: Record<string, unknown> } | { readonly model: string }
  readonly seqLen: number
  readonly batchSize: number
  readonly accum: number
  readonly epochs: number
  /** Stop after this many optimizer steps (default: epochs × batches per epoch). */
  readonly maxSteps?: number
  readonly lr: number
  readonly minLrRatio: number
  readonly warmupSteps: number
  readonly weightDecay: number
  /** Weight decay on norm gains too, as upstream (default false: matrices and embeddings only). */
  readonly decayNorms?: boolean
  /** LM loss of a step: one token mean (default) or the mean of micro-batch means (upstream). */
  readonly accumMean?: "token" | "micro"
  /** Leave out each epoch's last, short batch (default false: trained on, as upstream). */
  readonly dropLast?: boolean
  readonly gradClip: number | null
  readonly seed: number
  readonly evalEvery: number
  readonly evalBatches: number
  /** Share of samples held out for evaluation (deterministic split). */
  readonly evalFraction: number
  readonly saveEvery: number
  readonly resume: boolean
  readonly onBadRecord: "skip" | "fail"
  /** SFT/DPO: drop samples with no assistant token within `seqLen` (default: keep them, as upstream). */
  readonly skipUnlabeled?: boolean
  readonly objective: Objective
  readonly lora?: LoraOptions
  /** DPO: frozen reference model directory (default: the init model). */
  readonly reference?: string
  /** Distillation: teacher model directory. */
  readonly teacher?: string
  readonly augment?: AugmentOptions
  readonly pack?: boolean
  readonly device: Device
  /** Training forward precision: bf16 autocast (f32 master weights), f32, or auto (bf16 on CUDA, f32 on the CPU). */
  readonly precision?: "auto" | "bf16" | "f32"
  /** Write a progress bar / log lines to stderr. */
  readonly quiet?: boolean
  /** Stop (as if interrupted) after this many steps in this process; for tests. */
  readonly stopAfter?: number
  /** Data-parallel training: `nproc` rank processes (one per GPU), see launch.ts. */
  readonly parallel?: { readonly nproc: number; readonly backend: "nccl" | "tcp" }
  /** This process is one rank of a data-parallel job (set by the launcher, see launch.ts). */
  readonly dist?: RankOptions
}

/** One rank's part in a data-parallel stage. */
export interface RankOptions {
  readonly rank: number
  readonly worldSize: number
  readonly backend: "nccl" | "tcp"
  /** The rendezvous file rank 0 writes (its address or NCCL id). */
  readonly rendezvous: string
  /** Seconds to wait for the other ranks. */
  readonly timeoutS?: number
  /** Polled before each step (`step` = steps done): true once the launcher asked this rank to stop (Ctrl-C). */
  readonly stopRequested?: (step: number) => boolean
}

/**
 * The rows of one optimizer step that a rank trains on, as micro-batches. A step is always
 * `batchSize × accum` sequences whatever the number of ranks (the global batch of a single
 * process); each of `worldSize` ranks takes a contiguous share and splits it into micro-batches of
 * at most `batchSize` rows. The loss is a token mean over the whole step and the gradients are
 * summed over the ranks, so the update does not depend on the split: a run can resume with a
 * different number of GPUs. A short step (the end of an epoch) that does not split evenly gives
 * the first ranks one row more; a rank may then get no rows at all.
 */
export function rankMicroBatches(stepIndices: ArrayLike<number>, batchSize: number, rank: number, worldSize: number): number[][] {
  const total = stepIndices.length
  const from = Math.floor((rank * total) / worldSize)
  const share = Math.floor(((rank + 1) * total) / worldSize) - from
  const mine = Array.from({ length: share }, (_, i) => stepIndices[from + i]!)
  if (share === 0) return []
  if (total % worldSize === 0) {
    // Even split: equal micro-batches (fixed shapes on every rank).
    let m = Math.min(batchSize, share)
    while (share % m !== 0) m--
    return Array.from({ length: share / m }, (_, k) => mine.slice(k * m, (k + 1) * m))
  }
  const parts = Math.ceil(share / batchSize)
  return Array.from({ length: parts }, (_, k) => mine.slice(Math.floor((k * share) / parts), Math.floor(((k + 1) * share) / parts)))
}

/** Why `worldSize` ranks cannot split this stage's steps, or null. */
export function rankSplitProblem(o: Pick<StageOptions, "batchSize" | "accum" | "accumMean">, worldSize: number): string | null {
  if (worldSize > 1 && o.accumMean === "micro")
    return `--accum-mean micro averages per-micro-batch means, which depend on how ranks split a step: use the default token mean with --nproc ${worldSize}`
  const total = o.batchSize * o.accum
  return total % worldSize === 0
    ? null
    : `--nproc ${worldSize} must divide the sequences of one optimizer step (--batch-size ${o.batchSize} × --accum ${o.accum} = ${total}): e.g. --accum ${o.accum * worldSize}`
}

export interface StageSummary {
  stage: StageName
  status: "done" | "interrupted" | "failed"
  steps: number
  total_steps: number
  epochs: number
  tokens: number
  elapsed_s: number
  tokens_per_s: number
  final_loss: number | null
  final_eval_loss: number | null
  params: number
  trainable_params: number
  model_dir: string
  resumed_from_step: number | null
  skipped_records: number
  /** SFT/DPO samples (DPO: pairs) with no loss token within the sequence length: kept in the
   * training data as upstream keeps them, or skipped (then also in `skipped_records`) with --skip-unlabeled. */
  unlabeled_samples: number
  [k: string]: unknown
}

export interface MetricLine {
  step: number
  epoch: number
  loss: number
  lr: number
  grad_norm: number
  tokens: number
  tokens_per_s: number
  elapsed_s: number
  eval_loss?: number
  dpo_accuracy?: number
  reward_margin?: number
  kl?: number
}

const kindOf = (stage: StageName): DataKind => (stage === "pretrain" ? "pretrain" : stage === "dpo" ? "dpo" : "sft")


/** What the stage's data preparation counted (read back from index.json when shards are reused). */
interface StageData {
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
      kind: kindOf(o.stage),
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

/** Deterministic train/eval split of sample indices. */
export function splitIndices(n: number, evalFraction: number, seed: number): { train: Uint32Array; eval: Uint32Array } {
  const nEval = evalFraction > 0 && n > 1 ? Math.max(1, Math.min(n - 1, Math.round(n * evalFraction))) : 0
  const order = Uint32Array.from({ length: n }, (_, i) => i)
  let s = (seed ^ 0x5bd1e995) >>> 0
  const rnd = () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1))
    const t = order[i]!
    order[i] = order[j]!
    order[j] = t
  }
  return { eval: order.slice(0, nEval).sort(), train: order.slice(nEval).sort() }
}

/** Micro-batch rows for the trainer. DPO: chosen rows followed by rejected rows. */
const hostBatch = (shards: ShardSet, stage: StageName, indices: ArrayLike<number>, seqLen: number): Batch => {
  if (stage !== "dpo") return shards.getBatch(indices, seqLen)
  const { chosen, rejected } = shards.getPairBatch(indices, seqLen)
  const cat = <T extends Uint32Array | Float32Array>(a: T, b: T): T => {
    const out = new (a.constructor as new (n: number) => T)(a.length + b.length)
    out.set(a)
    out.set(b, a.length)
    return out
  }
  return { batchSize: chosen.batchSize * 2, seqLen, ids: cat(chosen.ids, rejected.ids), targets: cat(chosen.targets, rejected.targets), mask: cat(chosen.mask, rejected.mask) }
}

/**
 * What a data-parallel launcher does once, before it starts the ranks: the checks that would
 * otherwise fail on every rank, and the data preparation (the ranks then reuse the shards).
 */
export const prepareStage = (o: StageOptions, worldSize: number) =>
  Effect.gen(function* () {
    const stageDir = join(o.runDir, o.stage)
    mkdirSync(stageDir, { recursive: true })
    yield* startChecks(o, stageDir, worldSize)
    const { data } = yield* openStageData(o, stageDir)
    return { stageDir, skipped: data.skipped }
  }).pipe(Effect.scoped)

/** Refuses to start over an existing checkpoint (without --resume), or a step `worldSize` ranks cannot split. */
const startChecks = (o: StageOptions, stageDir: string, worldSize: number) =>
  Effect.gen(function* () {
    if (!o.resume && existsSync(join(stageDir, "checkpoint", "trainer_state.json"))) {
      return yield* Effect.fail(
        new StageError({ stage: o.stage, message: `${stageDir} already has a checkpoint: pass --resume to continue it, or use another --run name` }),
      )
    }
    const split = rankSplitProblem(o, worldSize)
    if (split) return yield* Effect.fail(new StageError({ stage: o.stage, message: split }))
  })

/** The stage's shards (prepared once, then reused), opened, and the train/eval split; at least one batch to train on. */
const openStageData = (o: StageOptions, stageDir: string) =>
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
 * Runs one stage to completion (or interruption); returns its summary. With `parallel.nproc > 1`
 * it starts that many rank processes (launch.ts) and returns rank 0's summary.
 */
export const runStage = (o: StageOptions) =>
  o.parallel && o.parallel.nproc > 1 && !o.dist ? launchStage(o) : runStageHere(o)

/** Runs one stage in this process (alone, or as one rank of a data-parallel job). */
export const runStageHere = (o: StageOptions) =>
  Effect.gen(function* () {
    const stageDir = join(o.runDir, o.stage)
    const ckptDir = join(stageDir, "checkpoint")
    const modelDir = join(stageDir, "model")
    mkdirSync(stageDir, { recursive: true })
    // Data-parallel: rank 0 alone writes logs, metrics, checkpoints and the model.
    const dist = o.dist && o.dist.worldSize > 1 ? o.dist : undefined
    const lead = !dist || dist.rank === 0
    const log = (msg: string) => {
      if (!o.quiet && lead) console.error(`[${o.stage}] ${msg}`)
    }
    yield* startChecks(o, stageDir, dist?.worldSize ?? 1)
    if (lead) writeJson(join(stageDir, "config.json"), { ...o, quiet: undefined, stopAfter: undefined, dist: undefined, parallel: undefined, ...(dist ? { world_size: dist.worldSize, dist_backend: dist.backend } : {}) })

    const { data, shards, split } = yield* openStageData(o, stageDir)
    const perStep = o.batchSize * o.accum
    const dropLast = o.dropLast ?? false
    // As upstream: an epoch is every train sample (the short last batch included unless
    // --drop-last), and a step never spans two epochs (the last step of an epoch may be short).
    let sampler = new BatchSampler({ numSamples: split.train.length, batchSize: o.batchSize, seed: o.seed, dropLast })
    const batchesPerEpoch = sampler.batchesPerEpoch
    const stepsPerEpoch = Math.ceil(batchesPerEpoch / o.accum)
    const totalSteps = o.maxSteps ?? stepsPerEpoch * o.epochs
    // The LR schedule's clock (schedule.ts): micro-batches of the whole run, as upstream's
    // get_lr; with --steps N, the N optimizer steps.
    const lrTotal = o.maxSteps !== undefined ? totalSteps : batchesPerEpoch * o.epochs
    const lrWarmup = o.maxSteps !== undefined ? o.warmupSteps : o.warmupSteps * o.accum

    // Model, frozen reference / teacher, trainer: all scoped.
    const model: Model = "preset" in o.init
      ? yield* initModel({ preset: o.init.preset, ...(o.init.overrides ?? {}) }, o.seed, o.device)
      : yield* loadModel(o.init.model, o.device)
    if (model.vocabSize < shards.index.tokenizer.vocabSize) {
      return yield* Effect.fail(
        new StageError({ stage: o.stage, message: `the model's vocab_size ${model.vocabSize} is smaller than the tokenizer's ${shards.index.tokenizer.vocabSize}` }),
      )
    }
    const reference = o.objective.kind === "dpo" ? yield* loadModel(o.reference ?? ("model" in o.init ? o.init.model : ""), o.device) : undefined
    const teacher = o.objective.kind === "distill"
      ? yield* (o.teacher ? loadModel(o.teacher, o.device) : Effect.fail(new StageError({ stage: o.stage, message: "distillation needs --teacher <model dir>" })))
      : undefined
    const trainer: Trainer = yield* openTrainer(model, {
      objective: o.objective,
      weightDecay: o.weightDecay,
      decayNorms: o.decayNorms ?? false,
      accumMean: o.accumMean ?? "token",
      gradClip: o.gradClip,
      seed: o.seed,
      lora: o.lora ?? null,
      reference,
      teacher,
      ...(o.precision && o.precision !== "auto" ? { autocast: o.precision } : {}),
    })

    // Resume.
    let step = 0
    let tokens = 0
    let elapsedBefore = 0
    let resumedFrom: number | null = null
    const metricsFile = join(stageDir, "metrics.jsonl")
    if (o.resume && existsSync(join(ckptDir, "trainer_state.json"))) {
      const extra = (yield* Effect.try({ try: () => trainer.loadCheckpoint(ckptDir), catch: (e) => e as Error })) as {
        sampler: SamplerState
        step: number
        tokens: number
        elapsed_s: number
      }
      sampler = BatchSampler.fromState(extra.sampler, split.train.length)
      if (sampler.dropLast !== dropLast) {
        return yield* Effect.fail(
          new StageError({ stage: o.stage, message: `the checkpoint in ${ckptDir} was written ${sampler.dropLast ? "with" : "without"} --drop-last: resume with the same setting` }),
        )
      }
      step = extra.step
      tokens = extra.tokens
      elapsedBefore = extra.elapsed_s
      resumedFrom = step
      // Metrics written after the checkpoint (a crash between save and exit) are dropped.
      if (lead && existsSync(metricsFile)) {
        const kept = readFileSync(metricsFile, "utf8").split("\n").filter((l) => {
          try {
            return l && (JSON.parse(l) as MetricLine).step <= step
          } catch {
            return false
          }
        })
        writeFileSync(metricsFile, kept.map((l) => l + "\n").join(""))
      }
      log(`resumed from ${ckptDir} at step ${step}/${totalSteps}`)
    } else if (lead && existsSync(metricsFile)) {
      rmSync(metricsFile)
    }
    if (step >= totalSteps && resumedFrom !== null && existsSync(join(stageDir, "summary.json"))) {
      const prev = JSON.parse(readFileSync(join(stageDir, "summary.json"), "utf8")) as StageSummary
      if (prev.status === "done") return prev
    }

    if (dist) {
      // Blocks until every rank is here; every rank then holds rank 0's weights.
      yield* Effect.try({
        try: () => trainer.join({ backend: dist.backend, rank: dist.rank, world_size: dist.worldSize, rendezvous: dist.rendezvous, ...(dist.timeoutS ? { timeout_s: dist.timeoutS } : {}) }),
        catch: (e) => new StageError({ stage: o.stage, message: `rank ${dist.rank}: ${(e as Error).message}` }),
      })
    }

    const info = trainer.info()
    const params = model.info().num_parameters
    const where = dist ? `${dist.worldSize} ranks (${dist.backend}), rank 0 on ${info.device}` : info.device
    log(`${params.toLocaleString()} parameters (${info.trainable_parameters.toLocaleString()} trainable), ${split.train.length} train / ${split.eval.length} eval samples, ${totalSteps} steps of ${perStep} × ${o.seqLen}, on ${where} in ${info.compute_dtype}`)

    // DPO's held-out loss: −log σ(β·((πc − πr) − (rc − rr))) on held-out pairs, from summed
    // masked log-probs of the live policy and the frozen reference (one row at a time).
    const live = o.stage === "dpo" ? yield* Effect.acquireRelease(Effect.sync(() => trainer.liveModel()), (m) => Effect.sync(() => m.free())) : undefined
    const evalDpo = (): number | undefined => {
      if (!live || !reference || split.eval.length === 0 || o.objective.kind !== "dpo") return undefined
      const beta = o.objective.beta
      const n = Math.min(split.eval.length, o.evalBatches * o.batchSize)
      let total = 0
      for (let i = 0; i < n; i++) {
        const { chosen, rejected } = shards.getPairBatch([split.eval[i]!], o.seqLen)
        const lp = (m: Model, b: Batch) => -m.loss(b.ids, b.targets, b.mask, 1).sum
        const z = beta * (lp(live, chosen) - lp(live, rejected) - (lp(reference, chosen) - lp(reference, rejected)))
        total += Math.log1p(Math.exp(-Math.abs(z))) + Math.max(-z, 0)
      }
      return total / n
    }

    const evalLoss = (): number | undefined => {
      if (o.stage === "dpo") return evalDpo()
      if (split.eval.length === 0) return undefined
      let sum = 0
      let count = 0
      const n = Math.min(split.eval.length, o.evalBatches * o.batchSize)
      for (let i = 0; i < n; i += o.batchSize) {
        const idx = split.eval.subarray(i, Math.min(n, i + o.batchSize))
        const b = shards.getBatch(idx, o.seqLen)
        const r = trainer.eval(b, idx.length)
        sum += r.sum
        count += r.count
      }
      return count ? sum / count : undefined
    }

    const bar = new ProgressBar({ label: o.stage, total: totalSteps, logEvery: 10, quiet: o.quiet || !lead })
    const t0 = performance.now()
    let last: StepResult | undefined
    let lastEval: number | undefined
    let status: StageSummary["status"] = "interrupted"
    let stepsThisRun = 0

    const elapsed = () => elapsedBefore + (performance.now() - t0) / 1000
    const saveCheckpoint = () =>
      trainer.saveCheckpoint(ckptDir, { sampler: sampler.state(), step, tokens, elapsed_s: elapsed(), stage: o.stage })

    const summary = (): StageSummary => ({
      stage: o.stage,
      status,
      steps: step,
      total_steps: totalSteps,
      epochs: o.epochs,
      tokens,
      elapsed_s: +elapsed().toFixed(2),
      tokens_per_s: +(tokens / Math.max(elapsed(), 1e-9)).toFixed(1),
      final_loss: last?.loss ?? null,
      final_eval_loss: lastEval ?? null,
      params,
      trainable_params: info.trainable_parameters,
      model_dir: modelDir,
      resumed_from_step: resumedFrom,
      skipped_records: data.skipped,
      unlabeled_samples: data.unlabeled,
      ...(dist ? { world_size: dist.worldSize, dist_backend: dist.backend } : {}),
      ...(last?.dpo ? { dpo_accuracy: last.dpo.accuracy, reward_margin: last.dpo.reward_margin } : {}),
      ...(last?.kl !== undefined ? { kl: last.kl } : {}),
    })

    // On any exit: interrupted or failed runs keep a checkpoint of the last completed step.
    yield* Effect.addFinalizer((exit) =>
      Effect.sync(() => {
        if (Exit.isSuccess(exit)) return
        status = Exit.hasInterrupts(exit) ? "interrupted" : "failed"
        bar.finish(`${status} at step ${step}/${totalSteps}`)
        if (!lead) return
        if (stepsThisRun > 0 || resumedFrom === null) {
          try {
            saveCheckpoint()
            log(`checkpoint saved to ${ckptDir} (resume with --resume)`)
          } catch (e) {
            console.error(`[${o.stage}] could not save a checkpoint: ${(e as Error).message}`)
          }
        }
        writeJson(join(stageDir, "summary.json"), summary())
      }),
    )

    while (step < totalSteps) {
      const groups: number[][] = []
      // Up to `accum` batches, not past the end of the epoch.
      const inEpoch = sampler.position >= sampler.batchesPerEpoch ? sampler.batchesPerEpoch : sampler.batchesPerEpoch - sampler.position
      for (let k = 0; k < Math.min(o.accum, inEpoch); k++) groups.push(Array.from(sampler.next().indices, (i) => split.train[i]!))
      // A rank trains on its share of the step's rows (the sampler, hence resume, is the same on every rank).
      const rows = dist ? rankMicroBatches(groups.flat(), o.batchSize, dist.rank, dist.worldSize) : groups
      const micro: Batch[] = rows.map((r) => hostBatch(shards, o.stage, r, o.seqLen))
      const lrClock = o.maxSteps !== undefined ? step + 1 : sampler.epoch * sampler.batchesPerEpoch + sampler.position
      const lr = cosineLr(lrClock, lrTotal, o.lr, lrWarmup, o.minLrRatio)
      if (dist?.stopRequested?.(step)) trainer.requestStop()
      last = yield* Effect.try({
        try: () => trainer.step(micro, micro.map((m) => m.batchSize), lr, o.seqLen),
        catch: (e) => new StageError({ stage: o.stage, message: `step ${step + 1}: ${(e as Error).message}` }),
      })
      step++
      stepsThisRun++
      tokens += last.tokens
      const line: MetricLine = {
        step,
        epoch: sampler.epoch,
        loss: last.loss,
        lr,
        grad_norm: last.grad_norm,
        tokens: last.tokens,
        tokens_per_s: 0,
        elapsed_s: +elapsed().toFixed(3),
      }
      line.tokens_per_s = +(tokens / Math.max(line.elapsed_s, 1e-9)).toFixed(1)
      if (last.dpo) {
        line.dpo_accuracy = last.dpo.accuracy
        line.reward_margin = last.dpo.reward_margin
      }
      if (last.kl !== undefined) line.kl = last.kl
      if (lead && ((o.evalEvery > 0 && step % o.evalEvery === 0) || step === totalSteps)) {
        lastEval = evalLoss()
        if (lastEval !== undefined) line.eval_loss = lastEval
      }
      if (lead) appendFileSync(metricsFile, JSON.stringify(line) + "\n")
      bar.update(step, { loss: last.loss, ...(lastEval !== undefined ? { eval: lastEval } : {}), lr: last.lr, "tok/s": Math.round(line.tokens_per_s) })
      if (lead && o.saveEvery > 0 && step % o.saveEvery === 0 && step < totalSteps) saveCheckpoint()
      if (o.stopAfter !== undefined && stepsThisRun >= o.stopAfter) return yield* Effect.interrupt
      // Data-parallel Ctrl-C: every rank stops after the same step.
      if (last.stop && step < totalSteps) return yield* Effect.interrupt
      // A yield point between steps: Ctrl-C lands here.
      yield* Effect.yieldNow
    }

    status = "done"
    if (!lead) return summary()
    saveCheckpoint()
    // Publish: LoRA stages save the adapters (PEFT's layout) and a merged model; others the weights.
    if (o.lora) {
      trainer.saveAdapters(join(stageDir, "adapter"))
      // The trainer's live model carries the adapters; saving it folds them into the base weights.
      const adapted = trainer.liveModel()
      try {
        adapted.save(modelDir)
      } finally {
        adapted.free()
      }
    } else {
      model.save(modelDir)
    }
    bar.finish(`done: ${step} steps, loss ${fmtNum(last?.loss ?? NaN)}${lastEval !== undefined ? `, eval ${fmtNum(lastEval)}` : ""}, model → ${modelDir}`)
    const s = summary()
    writeJson(join(stageDir, "summary.json"), s)
    // Tokenizer, generation_config.json and a model card: the folder a user pushes to the Hub.
    publishHf(modelDir, o.tokenizer)
    return s
  }).pipe(Effect.scoped)

