/**
 * The five training stages, each stated once: its data, objective, defaults, where it starts and
 * what it publishes. Everything else (sampler, schedule, eval, checkpoints, data-parallel ranks) is
 * the one loop in run.ts.
 *
 * Why a table and not a file per stage (nanochat's `scripts/chat_sft.py` style): in bunmind the
 * stages differ only in these few facts; the loop, its resume logic and its outputs are the same
 * for all five, and the objective itself (loss mask, DPO, KL) lives in the native trainer. A
 * readable file per stage would repeat the loop five times (the duplication issue 14 removes) or
 * stay a 7-line label; a table puts the differences side by side on one screen, and a new stage
 * is one row.
 *
 * Defaults are upstream MiniMind's (the argparse defaults of `trainer/train_*.py`). Settings that do
 * not depend on the stage (seed, eval/save cadence, preset, ...) are {@link RUN_DEFAULTS}.
 */
import type { DataKind } from "../data/index.ts"
import type { LoraOptions, Objective } from "../model/trainer.ts"

export type StageName = "pretrain" | "sft" | "lora" | "dpo" | "distill"

export const STAGE_NAMES: readonly StageName[] = ["pretrain", "sft", "lora", "dpo", "distill"]

/** Per-stage hyper-parameters (a flag or pipeline key overrides each). */
export interface StageDefaults {
  readonly epochs: number
  readonly batchSize: number
  readonly lr: number
  readonly accum: number
  readonly seqLen: number
  readonly weightDecay: number
  /** Global gradient-norm clip; null = off. */
  readonly gradClip: number | null
  /** The cosine ends at `minLrRatio × lr` (schedule.ts). */
  readonly minLrRatio: number
  readonly objective: Objective
  readonly lora?: LoraOptions
}

export interface StageSpec {
  /** What the stage's shards hold: `{"text"}` documents, chat conversations (assistant-masked), or preference pairs. */
  readonly data: DataKind
  /** Where the stage starts by default (upstream's `from_weight`): from scratch, or that stage's model in the run. */
  readonly from: StageName | "scratch"
  /** What `<stage>/model/` is: the trained weights, or (LoRA) the base with the adapters folded in, plus `<stage>/adapter/` (PEFT's layout). */
  readonly publish: "weights" | "adapters+merged"
  readonly defaults: StageDefaults
}

const common = { weightDecay: 0.01, gradClip: 1.0, minLrRatio: 0.1 } as const

export const STAGES: Record<StageName, StageSpec> = {
  pretrain: {
    data: "pretrain",
    from: "scratch",
    publish: "weights",
    defaults: { ...common, epochs: 2, batchSize: 32, lr: 5e-4, accum: 8, seqLen: 340, objective: { kind: "lm" } },
  },
  sft: {
    data: "sft",
    from: "pretrain",
    publish: "weights",
    defaults: { ...common, epochs: 2, batchSize: 16, lr: 1e-5, accum: 1, seqLen: 768, objective: { kind: "lm" } },
  },
  lora: {
    data: "sft",
    from: "sft",
    publish: "adapters+merged",
    defaults: {
      ...common,
      epochs: 10,
      batchSize: 32,
      lr: 1e-4,
      accum: 1,
      seqLen: 340,
      objective: { kind: "lm" },
      // "square": every projection with as many inputs as outputs, upstream's apply_lora rule
      // (q_proj and o_proj in MiniMind's presets), resolved by the engine.
      lora: { r: 16, lora_alpha: 16, lora_dropout: 0, target_modules: ["square"] },
    },
  },
  dpo: {
    data: "dpo",
    from: "sft",
    publish: "weights",
    defaults: { ...common, epochs: 1, batchSize: 4, lr: 4e-8, accum: 1, seqLen: 1024, objective: { kind: "dpo", beta: 0.15 } },
  },
  distill: {
    data: "sft",
    from: "sft",
    publish: "weights",
    defaults: { ...common, epochs: 6, batchSize: 32, lr: 5e-6, accum: 1, seqLen: 340, objective: { kind: "distill", alpha: 0.5, temperature: 1.5 } },
  },
}

/** Settings shared by every stage, with their defaults (the CLI's flag defaults read these). */
export const RUN_DEFAULTS = {
  seed: 42,
  /** Held-out loss every N steps (0 = only at the end). */
  evalEvery: 50,
  evalBatches: 4,
  /** Share of samples held out for evaluation. */
  evalFraction: 0.02,
  /** Checkpoint every N steps (and at the end / on Ctrl-C). */
  saveEvery: 100,
  warmupSteps: 0,
  /** The architecture when a stage starts from scratch. */
  preset: "minimind2-small",
  onBadRecord: "skip",
  accumMean: "token",
  dropLast: false,
  decayNorms: false,
  pack: false,
  /** SFT augmentation (upstream uses 0.2 and 0.8). */
  systemPromptP: 0,
  stripEmptyThinkP: 0,
  device: "cpu",
  precision: "auto",
  nproc: 1,
  distBackend: "nccl",
} as const

const dpoObjective = STAGES.dpo.defaults.objective as Extract<Objective, { kind: "dpo" }>
const distillObjective = STAGES.distill.defaults.objective as Extract<Objective, { kind: "distill" }>
/** The objective defaults by name, for flags (`--beta`, `--alpha`, `--temperature`) and pipeline keys. */
export const OBJECTIVE_DEFAULTS = { beta: dpoObjective.beta, alpha: distillObjective.alpha, temperature: distillObjective.temperature } as const
export const LORA_DEFAULTS: LoraOptions = STAGES.lora.defaults.lora!

/** Each stage's hyper-parameter defaults (a view of {@link STAGES}). */
export const STAGE_DEFAULTS = Object.fromEntries(Object.entries(STAGES).map(([k, v]) => [k, v.defaults])) as Record<StageName, StageDefaults>

/** Where each stage starts by default (a view of {@link STAGES}). */
export const STAGE_INIT = Object.fromEntries(Object.entries(STAGES).map(([k, v]) => [k, v.from])) as Record<StageName, StageName | "scratch">
