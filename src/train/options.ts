/**
 * What a stage run is told ({@link StageOptions}), what it writes ({@link StageSummary},
 * {@link MetricLine}), and the one place user settings become options: {@link resolveStageOptions}
 * (defaults from stages.ts, every value check), used by `bunmind train <stage>` and by pipelines.
 */
import { Data } from "effect"
import type { AugmentOptions } from "../data/index.ts"
import type { LoraOptions, Objective } from "../model/trainer.ts"
import type { Device } from "../native/library.ts"
import { RUN_DEFAULTS, STAGES, type StageName } from "./stages.ts"

export type { StageName } from "./stages.ts"

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
  /** Which native step ran ("handwritten" | "autograd"), when the library says. */
  step_path?: string
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
  /** Which native step ran, when the library says. */
  step_path?: string
}

/**
 * A stage's settings as a user gives them (flags or a pipeline entry): every field but the data,
 * tokenizer and start point is optional and falls back to stages.ts. A field given (even to its
 * default value) is kept in the options where the options say "only when set", so a pipeline's
 * stage hash does not change when a default is stated explicitly or a new setting is added.
 */
export interface StageSettings {
  readonly data: ReadonlyArray<string>
  readonly tokenizer: string
  readonly init: StageOptions["init"]
  readonly seqLen?: number
  readonly batchSize?: number
  readonly accum?: number
  readonly epochs?: number
  readonly steps?: number
  readonly lr?: number
  readonly warmup?: number
  readonly weightDecay?: number
  readonly decayNorms?: boolean
  readonly accumMean?: "token" | "micro"
  readonly dropLast?: boolean
  /** 0 = off. */
  readonly gradClip?: number
  readonly seed?: number
  readonly evalEvery?: number
  readonly evalBatches?: number
  readonly evalFraction?: number
  readonly saveEvery?: number
  readonly resume?: boolean
  readonly onBadRecord?: "skip" | "fail"
  readonly skipUnlabeled?: boolean
  /** DPO β. */
  readonly beta?: number
  /** Distillation: weight of the CE term, and the temperature. */
  readonly alpha?: number
  readonly temperature?: number
  readonly teacher?: string
  readonly reference?: string
  /** LoRA: `lora_alpha` defaults to `r`. */
  readonly lora?: Partial<LoraOptions>
  readonly systemPromptP?: number
  readonly stripEmptyThinkP?: number
  readonly pack?: boolean
  readonly device?: Device
  readonly precision?: "auto" | "bf16" | "f32"
  readonly nproc?: number
  readonly distBackend?: "nccl" | "tcp"
}

/** A setting with a bad value; `field` is the StageSettings key (callers name it as a flag or a config key). */
export class SettingError extends Data.TaggedError("SettingError")<{ readonly field: string; readonly message: string }> {}

type Check = readonly [what: string, ok: (v: unknown) => boolean]
const isNum = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v)
const positiveInt: Check = ["a positive integer", (v) => Number.isInteger(v) && (v as number) > 0]
const count: Check = ["a non-negative integer", (v) => Number.isInteger(v) && (v as number) >= 0]
const positive: Check = ["> 0", (v) => isNum(v) && v > 0]
const nonNegative: Check = ["≥ 0", (v) => isNum(v) && v >= 0]
const share: Check = ["between 0 and 1", (v) => isNum(v) && v >= 0 && v <= 1]
const shareBelow1: Check = ["≥ 0 and < 1", (v) => isNum(v) && v >= 0 && v < 1]
const oneOf = (...xs: string[]): Check => [`one of ${xs.join(", ")}`, (v) => xs.includes(v as string)]
const bool: Check = ["true or false", (v) => typeof v === "boolean"]

const CHECKS: Partial<Record<keyof StageSettings | `lora.${keyof LoraOptions}`, Check>> = {
  seqLen: positiveInt,
  batchSize: positiveInt,
  accum: positiveInt,
  epochs: positiveInt,
  steps: positiveInt,
  lr: positive,
  warmup: count,
  weightDecay: nonNegative,
  decayNorms: bool,
  accumMean: oneOf("token", "micro"),
  dropLast: bool,
  gradClip: nonNegative,
  seed: ["an integer", (v) => Number.isInteger(v)],
  evalEvery: count,
  evalBatches: count,
  evalFraction: shareBelow1,
  saveEvery: count,
  onBadRecord: oneOf("skip", "fail"),
  skipUnlabeled: bool,
  beta: positive,
  alpha: share,
  temperature: positive,
  systemPromptP: share,
  stripEmptyThinkP: share,
  pack: bool,
  precision: oneOf("auto", "bf16", "f32"),
  nproc: positiveInt,
  distBackend: oneOf("nccl", "tcp"),
  "lora.r": positiveInt,
  "lora.lora_alpha": positive,
  "lora.lora_dropout": shareBelow1,
  "lora.target_modules": ["a non-empty list of module names", (v) => Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "string" && x.length > 0)],
}

/**
 * Every value check of a stage's settings; the first bad one, or null. Both the CLI (before a
 * stage starts) and a pipeline (when its config is read, before any stage runs) call this.
 */
export function checkStageSettings(s: Partial<StageSettings>): SettingError | null {
  const values: [string, unknown][] = Object.entries(s)
  if (s.lora) values.push(...Object.entries(s.lora).map(([k, v]) => [`lora.${k}`, v] as [string, unknown]))
  for (const [field, v] of values) {
    const c = CHECKS[field as keyof typeof CHECKS]
    if (c && v !== undefined && !c[1](v)) return new SettingError({ field, message: `expected ${c[0]}, got ${JSON.stringify(v)}` })
  }
  return null
}

/** The options of one stage: `s` over the stage's defaults (stages.ts), checked; throws a {@link SettingError}. */
export function resolveStageOptions(stage: StageName, runDir: string, s: StageSettings): StageOptions {
  const bad = checkStageSettings(s)
  if (bad) throw bad
  const d = STAGES[stage].defaults
  const R = RUN_DEFAULTS
  const seed = s.seed ?? R.seed
  const clip = s.gradClip ?? d.gradClip
  const objective: Objective =
    d.objective.kind === "dpo"
      ? { kind: "dpo", beta: s.beta ?? d.objective.beta }
      : d.objective.kind === "distill"
        ? { kind: "distill", alpha: s.alpha ?? d.objective.alpha, temperature: s.temperature ?? d.objective.temperature }
        : d.objective
  const dl = d.lora
  const lora: LoraOptions | undefined = dl
    ? {
        r: s.lora?.r ?? dl.r,
        lora_alpha: s.lora?.lora_alpha ?? s.lora?.r ?? dl.lora_alpha,
        lora_dropout: s.lora?.lora_dropout ?? dl.lora_dropout ?? 0,
        target_modules: s.lora?.target_modules ?? dl.target_modules,
        ...(s.lora?.use_rslora ? { use_rslora: true } : {}),
      }
    : undefined
  const nproc = s.nproc ?? R.nproc
  // The key order and the "only when set" keys are part of a pipeline stage's hash (pipeline.ts):
  // a new key is added only when set, so finished stages of existing configs keep their hash.
  return {
    stage,
    runDir,
    data: s.data,
    tokenizer: s.tokenizer,
    init: s.init,
    seqLen: s.seqLen ?? d.seqLen,
    batchSize: s.batchSize ?? d.batchSize,
    accum: s.accum ?? d.accum,
    epochs: s.epochs ?? d.epochs,
    ...(s.steps !== undefined ? { maxSteps: s.steps } : {}),
    lr: s.lr ?? d.lr,
    minLrRatio: d.minLrRatio,
    warmupSteps: s.warmup ?? R.warmupSteps,
    weightDecay: s.weightDecay ?? d.weightDecay,
    ...(s.decayNorms !== undefined ? { decayNorms: s.decayNorms } : {}),
    ...(s.accumMean !== undefined ? { accumMean: s.accumMean } : {}),
    ...(s.dropLast !== undefined ? { dropLast: s.dropLast } : {}),
    gradClip: clip !== null && clip > 0 ? clip : null,
    seed,
    evalEvery: s.evalEvery ?? R.evalEvery,
    evalBatches: s.evalBatches ?? R.evalBatches,
    evalFraction: s.evalFraction ?? R.evalFraction,
    saveEvery: s.saveEvery ?? R.saveEvery,
    resume: s.resume ?? false,
    onBadRecord: s.onBadRecord ?? R.onBadRecord,
    ...(s.skipUnlabeled ? { skipUnlabeled: true } : {}),
    objective,
    ...(lora ? { lora } : {}),
    ...(s.teacher ? { teacher: s.teacher } : {}),
    ...(s.reference ? { reference: s.reference } : {}),
    augment: { systemPromptP: s.systemPromptP ?? R.systemPromptP, stripEmptyThinkP: s.stripEmptyThinkP ?? R.stripEmptyThinkP, seed },
    pack: s.pack ?? R.pack,
    device: s.device ?? R.device,
    ...(s.precision !== undefined ? { precision: s.precision } : {}),
    ...(nproc > 1 ? { parallel: { nproc, backend: s.distBackend ?? R.distBackend } } : {}),
  }
}
