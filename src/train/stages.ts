/**
 * Per-stage defaults, from upstream MiniMind's training scripts (the argparse defaults of
 * `trainer/train_*.py`): what each stage starts from, its data shape, objective and hyper-parameters.
 * The stage files (pretrain.ts, sft.ts, ...) fill these into the shared loop.
 */
import type { StageName, StageOptions } from "./loop.ts"

export type StageDefaults = Pick<
  StageOptions,
  "epochs" | "batchSize" | "lr" | "accum" | "seqLen" | "objective" | "weightDecay" | "gradClip" | "minLrRatio" | "warmupSteps"
> & { lora?: StageOptions["lora"] }

const common = { weightDecay: 0.01, gradClip: 1.0, minLrRatio: 0.1, warmupSteps: 0 } as const

export const STAGE_DEFAULTS: Record<StageName, StageDefaults> = {
  pretrain: { ...common, epochs: 2, batchSize: 32, lr: 5e-4, accum: 8, seqLen: 340, objective: { kind: "lm" } },
  sft: { ...common, epochs: 2, batchSize: 16, lr: 1e-5, accum: 1, seqLen: 768, objective: { kind: "lm" } },
  lora: {
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
  dpo: { ...common, epochs: 1, batchSize: 4, lr: 4e-8, accum: 1, seqLen: 1024, objective: { kind: "dpo", beta: 0.15 } },
  distill: { ...common, epochs: 6, batchSize: 32, lr: 5e-6, accum: 1, seqLen: 340, objective: { kind: "distill", alpha: 0.5, temperature: 1.5 } },
}

/** Where each stage starts by default (upstream's `from_weight`). */
export const STAGE_INIT: Record<StageName, StageName | "scratch"> = {
  pretrain: "scratch",
  sft: "pretrain",
  lora: "sft",
  dpo: "sft",
  distill: "sft",
}
