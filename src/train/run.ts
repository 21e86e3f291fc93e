/**
 * The loop every training stage shares (the stages' differences are the table in stages.ts):
 *
 *   data (raw files → shards, once; data.ts) → model (init / load) → trainer (objective, LoRA)
 *   → for each step: `accum` micro-batches from a seeded, resumable sampler, filled into one
 *     buffer → native step at the cosine LR (schedule.ts) → metrics line + progress bar
 *     → eval every N (eval.ts) → checkpoint every N
 *   → final checkpoint, published model (publish.ts), summary.json
 *
 * Native handles (tokenizer, models, trainer) are scoped. Interruption (Ctrl-C / SIGTERM) lands
 * between two steps (a native step is one synchronous call); the finalizer then writes a
 * checkpoint of the last completed step from the loop's {@link LoopState}, so `--resume`
 * continues with the same data order, optimizer state and RNG, and reproduces the uninterrupted
 * loss sequence exactly.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { Effect, Exit } from "effect"
import { BatchSampler, type SamplerState } from "../data/index.ts"
import { initModel, loadModel, type Model } from "../model/model.ts"
import { openTrainer, type StepResult, type Trainer } from "../model/trainer.ts"
import { writeJsonAtomic } from "../util/fs.ts"
import { ProgressBar, fmtNum } from "../util/progress.ts"
import { openStageData, stepBatch } from "./data.ts"
import { rankMicroBatches, rankSplitProblem } from "./distributed.ts"
import { stageEval } from "./eval.ts"
import { StageError, type MetricLine, type StageOptions, type StageSummary } from "./options.ts"
import { publishStage, writeSummary } from "./publish.ts"
import { cosineLr } from "./schedule.ts"

/**
 * What a checkpoint stores besides the trainer's own state (the `extra` of trainer_state.json).
 * Its shape is part of the checkpoint format.
 */
interface CheckpointExtra {
  sampler: SamplerState
  step: number
  tokens: number
  elapsed_s: number
  stage?: string
}

/** Everything the loop changes as it runs; the finalizer (interrupted / failed runs) reads it. */
export interface LoopState {
  sampler: BatchSampler
  /** Optimizer steps done (this run and the ones resumed from). */
  step: number
  stepsThisRun: number
  tokens: number
  /** Seconds spent in earlier runs of this stage (from the checkpoint). */
  elapsedBefore: number
  resumedFrom: number | null
  last: StepResult | undefined
  lastEval: number | undefined
  status: StageSummary["status"]
}

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

/** The model to train and the frozen reference (DPO) / teacher (distillation), scoped. */
const openModels = (o: StageOptions) =>
  Effect.gen(function* () {
    const model: Model = "preset" in o.init
      ? yield* initModel({ preset: o.init.preset, ...(o.init.overrides ?? {}) }, o.seed, o.device)
      : yield* loadModel(o.init.model, o.device)
    const reference = o.objective.kind === "dpo" ? yield* loadModel(o.reference ?? ("model" in o.init ? o.init.model : ""), o.device) : undefined
    const teacher = o.objective.kind === "distill"
      ? yield* (o.teacher ? loadModel(o.teacher, o.device) : Effect.fail(new StageError({ stage: o.stage, message: "distillation needs --teacher <model dir>" })))
      : undefined
    return { model, reference, teacher }
  })

/** Restores the trainer and the loop state from the stage's checkpoint (same --drop-last, same shards). */
const resumeFrom = (o: StageOptions, ckptDir: string, trainer: Trainer, s: LoopState, numTrain: number) =>
  Effect.gen(function* () {
    const extra = (yield* Effect.try({ try: () => trainer.loadCheckpoint(ckptDir), catch: (e) => e as Error })) as CheckpointExtra
    const sampler = BatchSampler.fromState(extra.sampler, numTrain)
    if (sampler.dropLast !== (o.dropLast ?? false)) {
      return yield* Effect.fail(
        new StageError({ stage: o.stage, message: `the checkpoint in ${ckptDir} was written ${sampler.dropLast ? "with" : "without"} --drop-last: resume with the same setting` }),
      )
    }
    s.sampler = sampler
    s.step = extra.step
    s.tokens = extra.tokens
    s.elapsedBefore = extra.elapsed_s
    s.resumedFrom = extra.step
  })

/** Metrics lines up to `step` (written before the checkpoint being resumed); later ones are dropped. */
const keepMetricsUpTo = (file: string, step: number) => {
  const kept = readFileSync(file, "utf8").split("\n").filter((l) => {
    try {
      return l && (JSON.parse(l) as MetricLine).step <= step
    } catch {
      return false
    }
  })
  writeFileSync(file, kept.map((l) => l + "\n").join(""))
}

/** The metrics line of one step (the step's result, its LR, the run's token count so far); `step_path` when the library reports it. */
export const metricLine = (s: Pick<LoopState, "step" | "sampler" | "tokens">, r: StepResult, lr: number, elapsedS: number): MetricLine => ({
  step: s.step,
  epoch: s.sampler.epoch,
  loss: r.loss,
  lr,
  grad_norm: r.grad_norm,
  tokens: r.tokens,
  tokens_per_s: +(s.tokens / Math.max(elapsedS, 1e-9)).toFixed(1),
  elapsed_s: elapsedS,
  ...(r.dpo ? { dpo_accuracy: r.dpo.accuracy, reward_margin: r.dpo.reward_margin } : {}),
  ...(r.kl !== undefined ? { kl: r.kl } : {}),
  ...(r.step_path !== undefined ? { step_path: r.step_path } : {}),
})

/** Runs one stage in this process (alone, or as one rank of a data-parallel job). */
export const runStageHere = (o: StageOptions) =>
  Effect.gen(function* () {
    const stageDir = join(o.runDir, o.stage)
    const ckptDir = join(stageDir, "checkpoint")
    const modelDir = join(stageDir, "model")
    const metricsFile = join(stageDir, "metrics.jsonl")
    mkdirSync(stageDir, { recursive: true })
    // Data-parallel: rank 0 alone writes logs, metrics, checkpoints and the model.
    const dist = o.dist && o.dist.worldSize > 1 ? o.dist : undefined
    const lead = !dist || dist.rank === 0
    const log = (msg: string) => {
      if (!o.quiet && lead) console.error(`[${o.stage}] ${msg}`)
    }
    yield* startChecks(o, stageDir, dist?.worldSize ?? 1)
    if (lead) writeJsonAtomic(join(stageDir, "config.json"), { ...o, quiet: undefined, stopAfter: undefined, dist: undefined, parallel: undefined, ...(dist ? { world_size: dist.worldSize, dist_backend: dist.backend } : {}) })

    const { data, shards, split } = yield* openStageData(o, stageDir)
    const perStep = o.batchSize * o.accum
    const dropLast = o.dropLast ?? false
    // As upstream: an epoch is every train sample (the short last batch included unless
    // --drop-last), and a step never spans two epochs (the last step of an epoch may be short).
    const fresh = new BatchSampler({ numSamples: split.train.length, batchSize: o.batchSize, seed: o.seed, dropLast })
    const batchesPerEpoch = fresh.batchesPerEpoch
    const stepsPerEpoch = Math.ceil(batchesPerEpoch / o.accum)
    const totalSteps = o.maxSteps ?? stepsPerEpoch * o.epochs
    // The LR schedule's clock (schedule.ts): micro-batches of the whole run, as upstream's
    // get_lr; with --steps N, the N optimizer steps.
    const lrTotal = o.maxSteps !== undefined ? totalSteps : batchesPerEpoch * o.epochs
    const lrWarmup = o.maxSteps !== undefined ? o.warmupSteps : o.warmupSteps * o.accum

    const { model, reference, teacher } = yield* openModels(o)
    if (model.vocabSize < shards.index.tokenizer.vocabSize) {
      return yield* Effect.fail(
        new StageError({ stage: o.stage, message: `the model's vocab_size ${model.vocabSize} is smaller than the tokenizer's ${shards.index.tokenizer.vocabSize}` }),
      )
    }
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

    const s: LoopState = { sampler: fresh, step: 0, stepsThisRun: 0, tokens: 0, elapsedBefore: 0, resumedFrom: null, last: undefined, lastEval: undefined, status: "interrupted" }

    if (o.resume && existsSync(join(ckptDir, "trainer_state.json"))) {
      yield* resumeFrom(o, ckptDir, trainer, s, split.train.length)
      // Metrics written after the checkpoint (a crash between save and exit) are dropped.
      if (lead && existsSync(metricsFile)) keepMetricsUpTo(metricsFile, s.step)
      log(`resumed from ${ckptDir} at step ${s.step}/${totalSteps}`)
    } else if (lead && existsSync(metricsFile)) {
      rmSync(metricsFile)
    }
    if (s.step >= totalSteps && s.resumedFrom !== null && existsSync(join(stageDir, "summary.json"))) {
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

    const live = o.objective.kind === "dpo" && reference ? yield* Effect.acquireRelease(Effect.sync(() => trainer.liveModel()), (m) => Effect.sync(() => m.free())) : undefined
    const evalLoss = stageEval(o, { shards, eval: split.eval }, trainer, live && reference ? { live, reference } : undefined)

    const bar = new ProgressBar({ label: o.stage, total: totalSteps, logEvery: 10, quiet: o.quiet || !lead })
    const t0 = performance.now()
    const elapsed = () => s.elapsedBefore + (performance.now() - t0) / 1000
    const saveCheckpoint = () =>
      trainer.saveCheckpoint(ckptDir, { sampler: s.sampler.state(), step: s.step, tokens: s.tokens, elapsed_s: elapsed(), stage: o.stage } satisfies CheckpointExtra)
    const summary = (): StageSummary => ({
      stage: o.stage,
      status: s.status,
      steps: s.step,
      total_steps: totalSteps,
      epochs: o.epochs,
      tokens: s.tokens,
      elapsed_s: +elapsed().toFixed(2),
      tokens_per_s: +(s.tokens / Math.max(elapsed(), 1e-9)).toFixed(1),
      final_loss: s.last?.loss ?? null,
      final_eval_loss: s.lastEval ?? null,
      params,
      trainable_params: info.trainable_parameters,
      model_dir: modelDir,
      resumed_from_step: s.resumedFrom,
      skipped_records: data.skipped,
      unlabeled_samples: data.unlabeled,
      ...(dist ? { world_size: dist.worldSize, dist_backend: dist.backend } : {}),
      ...(s.last?.dpo ? { dpo_accuracy: s.last.dpo.accuracy, reward_margin: s.last.dpo.reward_margin } : {}),
      ...(s.last?.kl !== undefined ? { kl: s.last.kl } : {}),
      ...(s.last?.step_path !== undefined ? { step_path: s.last.step_path } : {}),
    })

    // On any exit: interrupted or failed runs keep a checkpoint of the last completed step.
    yield* Effect.addFinalizer((exit) =>
      Effect.sync(() => {
        if (Exit.isSuccess(exit)) return
        s.status = Exit.hasInterrupts(exit) ? "interrupted" : "failed"
        bar.finish(`${s.status} at step ${s.step}/${totalSteps}`)
        if (!lead) return
        if (s.stepsThisRun > 0 || s.resumedFrom === null) {
          try {
            saveCheckpoint()
            log(`checkpoint saved to ${ckptDir} (resume with --resume)`)
          } catch (e) {
            console.error(`[${o.stage}] could not save a checkpoint: ${(e as Error).message}`)
          }
        }
        writeSummary(stageDir, summary())
      }),
    )

    while (s.step < totalSteps) {
      const { sampler } = s
      const groups: number[][] = []
      // Up to `accum` batches, not past the end of the epoch.
      const inEpoch = sampler.position >= sampler.batchesPerEpoch ? sampler.batchesPerEpoch : sampler.batchesPerEpoch - sampler.position
      for (let k = 0; k < Math.min(o.accum, inEpoch); k++) groups.push(Array.from(sampler.next().indices, (i) => split.train[i]!))
      // A rank trains on its share of the step's rows (the sampler, hence resume, is the same on every rank).
      const { batch, rows } = stepBatch(shards, o, dist ? rankMicroBatches(groups.flat(), o.batchSize, dist.rank, dist.worldSize) : groups)
      const lrClock = o.maxSteps !== undefined ? s.step + 1 : sampler.epoch * sampler.batchesPerEpoch + sampler.position
      const lr = cosineLr(lrClock, lrTotal, o.lr, lrWarmup, o.minLrRatio)
      if (dist?.stopRequested?.(s.step)) trainer.requestStop()
      const r = yield* Effect.try({
        try: () => trainer.stepRows(batch, rows, lr, o.seqLen),
        catch: (e) => new StageError({ stage: o.stage, message: `step ${s.step + 1}: ${(e as Error).message}` }),
      })
      s.last = r
      s.step++
      s.stepsThisRun++
      s.tokens += r.tokens
      const line = metricLine(s, r, lr, +elapsed().toFixed(3))
      if (lead && ((o.evalEvery > 0 && s.step % o.evalEvery === 0) || s.step === totalSteps)) {
        s.lastEval = evalLoss()
        if (s.lastEval !== undefined) line.eval_loss = s.lastEval
      }
      if (lead) appendFileSync(metricsFile, JSON.stringify(line) + "\n")
      bar.update(s.step, { loss: r.loss, ...(s.lastEval !== undefined ? { eval: s.lastEval } : {}), lr: r.lr, "tok/s": Math.round(line.tokens_per_s) })
      if (lead && o.saveEvery > 0 && s.step % o.saveEvery === 0 && s.step < totalSteps) saveCheckpoint()
      if (o.stopAfter !== undefined && s.stepsThisRun >= o.stopAfter) return yield* Effect.interrupt
      // Data-parallel Ctrl-C: every rank stops after the same step.
      if (r.stop && s.step < totalSteps) return yield* Effect.interrupt
      // A yield point between steps: Ctrl-C lands here.
      yield* Effect.yieldNow
    }

    s.status = "done"
    if (!lead) return summary()
    saveCheckpoint()
    const done = summary()
    publishStage(o, stageDir, model, trainer, done)
    bar.finish(`done: ${s.step} steps, loss ${fmtNum(s.last?.loss ?? NaN)}${s.lastEval !== undefined ? `, eval ${fmtNum(s.lastEval)}` : ""}, model → ${modelDir}`)
    return done
  }).pipe(Effect.scoped)
