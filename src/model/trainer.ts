/**
 * The native trainer: one `step` = one optimizer step (forward, masked loss, backward, gradient
 * accumulation over micro-batches, clipping, AdamW at the given learning rate).
 */
import { ptr } from "bun:ffi"
import { Effect, Scope } from "effect"
import { NativeError } from "../native/errors.ts"
import { ptrOf, utf8 } from "../native/library.ts"
import { Model } from "./model.ts"

export type Objective =
  | { kind: "lm" }
  | { kind: "dpo"; beta: number }
  | { kind: "distill"; alpha: number; temperature: number }

export interface LoraOptions {
  r: number
  lora_alpha: number
  lora_dropout?: number
  /** Rank-stabilised LoRA (PEFT's use_rslora): scale alpha/√r instead of alpha/r. */
  use_rslora?: boolean
  target_modules: string[]
}

export interface TrainerOptions {
  objective?: Objective
  weightDecay?: number
  beta1?: number
  beta2?: number
  eps?: number
  /** Global-norm clip; null disables. Default 1.0. */
  gradClip?: number | null
  seed?: number
  lora?: LoraOptions | null
  reference?: Model
  teacher?: Model
  /** Training forward precision: "bf16" autocast (f32 master weights) or "f32"; default: bf16 on CUDA, f32 on the CPU. */
  autocast?: "bf16" | "f32"
  /** Weight decay on norm gains too (upstream decays every parameter). Default false. */
  decayNorms?: boolean
  /** LM loss of a step: one token mean ("token", default) or the mean of micro-batch means ("micro", upstream). */
  accumMean?: "token" | "micro"
}

export interface StepResult {
  step: number
  loss: number
  grad_norm: number
  lr: number
  tokens: number
  applied: boolean
  aux_loss: number
  dpo?: { chosen_reward: number; rejected_reward: number; reward_margin: number; accuracy: number }
  kl?: number
  ce?: number
  /** Data-parallel: some rank asked to stop after this step (the same on every rank). */
  stop?: boolean
  /** Ranks that took part in the step. */
  world_size: number
  /** Which native step ran: the hand-written kernels or the autograd graph (libraries that report it). */
  step_path?: "handwritten" | "autograd"
}

/** How one rank joins a data-parallel job (see core-rs/engine/src/dist). */
export interface DistJoin {
  backend: "nccl" | "tcp"
  rank: number
  world_size: number
  /** File rank 0 writes its address / NCCL id to; every rank must see it. */
  rendezvous: string
  /** Seconds to wait for the other ranks (rendezvous and each collective). */
  timeout_s?: number
}

/** Rows `[b, t]` of inputs, targets and mask, flattened. */
export interface HostBatch {
  ids: Uint32Array
  targets: Uint32Array
  mask: Float32Array
}

export class Trainer {
  #freed = false

  constructor(readonly model: Model, readonly handle: number) {}

  get native() {
    return this.model.native
  }

  /**
   * One optimizer step over `micro` batches of `b` rows each, or of `b[i]` rows for batch `i`
   * (the short last batch of an epoch). Every batch has the same sequence length `t`, which must
   * be given when `micro` may be empty (a rank without rows in a data-parallel step). Copies the
   * micro-batches into one buffer; the stage loop fills one itself and calls {@link stepRows}.
   */
  step(micro: HostBatch[], b: number | readonly number[], lr: number, t?: number): StepResult {
    const n = micro.length
    const rows = typeof b === "number" ? Array<number>(n).fill(b) : b
    if (rows.length !== n) throw new RangeError(`step: ${n} micro-batches but ${rows.length} row counts`)
    const seq = t ?? (n > 0 ? micro[0]!.ids.length / rows[0]! : 0)
    if (n === 1) return this.stepRows(micro[0]!, rows, lr, seq)
    const total = rows.reduce((a, r) => a + r * seq, 0)
    const cat = <T extends Uint32Array | Float32Array>(k: keyof HostBatch, C: new (n: number) => T): T => {
      const out = new C(total)
      let at = 0
      micro.forEach((m, i) => {
        if (m[k].length !== rows[i]! * seq) throw new RangeError(`step: micro-batch ${i} has ${m[k].length} ${k}, expected ${rows[i]} × ${seq}`)
        out.set(m[k] as unknown as ArrayLike<number>, at)
        at += m[k].length
      })
      return out
    }
    return this.stepRows({ ids: cat("ids", Uint32Array), targets: cat("targets", Uint32Array), mask: cat("mask", Float32Array) }, rows, lr, seq)
  }

  /**
   * One optimizer step over the rows of `batch` (contiguous, `[Σ rows, t]`), split into
   * micro-batches of `rows[i]` rows in order; no copy on this side.
   */
  stepRows(batch: HostBatch, rows: readonly number[], lr: number, t: number): StepResult {
    const total = rows.reduce((a, r) => a + r * t, 0)
    for (const k of ["ids", "targets", "mask"] as const) {
      if (batch[k].length !== total) throw new RangeError(`step: ${batch[k].length} ${k} for ${rows.join(" + ")} rows × ${t}`)
    }
    const counts = Uint32Array.from(rows)
    const s = this.native.readString("bm_trainer_step_rows", (buf, cap, len) =>
      this.native.sym.bm_trainer_step_rows(this.handle, ptrOf(batch.ids), ptrOf(batch.targets), ptrOf(batch.mask), rows.length, ptrOf(counts), t, lr, buf, cap, len),
    )
    return JSON.parse(s)
  }

  /** Held-out masked cross-entropy: sum over counted targets and their count. */
  eval(batch: HostBatch, b: number): { sum: number; count: number } {
    const out = new Float64Array(2)
    const t = batch.ids.length / b
    this.native.check("bm_trainer_eval", this.native.sym.bm_trainer_eval(this.handle, ptrOf(batch.ids), ptrOf(batch.targets), ptrOf(batch.mask), b, t, ptr(out)))
    return { sum: out[0]!, count: out[1]! }
  }

  /**
   * Joins a data-parallel job: blocks until every rank has joined, then takes rank 0's weights.
   * Later steps sum the gradients over the ranks.
   */
  join(cfg: DistJoin): void {
    const c = utf8(JSON.stringify(cfg))
    this.native.check("bm_trainer_join", this.native.sym.bm_trainer_join(this.handle, ptrOf(c), c.byteLength))
  }

  /** Asks every rank to stop after the next step (its result then has `stop: true`). */
  requestStop(on = true): void {
    this.native.check("bm_trainer_request_stop", this.native.sym.bm_trainer_request_stop(this.handle, on ? 1 : 0))
  }

  saveCheckpoint(dir: string, extra: unknown): void {
    const d = utf8(dir)
    const e = utf8(JSON.stringify(extra ?? null))
    this.native.check("bm_trainer_save_checkpoint", this.native.sym.bm_trainer_save_checkpoint(this.handle, ptrOf(d), d.byteLength, ptrOf(e), e.byteLength))
  }

  /** Restores a checkpoint; returns the `extra` saved with it. */
  loadCheckpoint(dir: string): unknown {
    const d = utf8(dir)
    return JSON.parse(this.native.readString("bm_trainer_load_checkpoint", (b, c, l) => this.native.sym.bm_trainer_load_checkpoint(this.handle, ptrOf(d), d.byteLength, b, c, l)))
  }

  info(): {
    step: number
    trainable_parameters: number
    compute_dtype: "bf16" | "f32"
    device: string
    config: unknown
    dist: { rank: number; world_size: number; backend: string } | null
  } {
    return JSON.parse(this.native.readString("bm_trainer_info", (b, c, l) => this.native.sym.bm_trainer_info(this.handle, b, c, l)))
  }

  /** A model handle on the trainer's live weights (LoRA attached), for sampling and evaluation. */
  liveModel(): Model {
    const box = new Uint32Array(1)
    this.native.check("bm_trainer_model", this.native.sym.bm_trainer_model(this.handle, ptr(box)))
    return new Model(this.native, box[0]!, `${this.model.source} (training)`)
  }

  saveAdapters(dir: string): void {
    const d = utf8(dir)
    this.native.check("bm_trainer_save_adapters", this.native.sym.bm_trainer_save_adapters(this.handle, ptrOf(d), d.byteLength))
  }

  free(): void {
    if (this.#freed) return
    this.#freed = true
    this.native.check("bm_trainer_free", this.native.sym.bm_trainer_free(this.handle))
  }
}

export function openTrainerSync(model: Model, o: TrainerOptions = {}): Trainer {
  const cfg = utf8(
    JSON.stringify({
      objective: o.objective ?? { kind: "lm" },
      weight_decay: o.weightDecay ?? 0.01,
      beta1: o.beta1 ?? 0.9,
      beta2: o.beta2 ?? 0.999,
      eps: o.eps ?? 1e-8,
      grad_clip: o.gradClip === undefined ? 1.0 : o.gradClip,
      seed: o.seed ?? 42,
      lora: o.lora ?? null,
      autocast: o.autocast ?? null,
      decay_norms: o.decayNorms ?? false,
      accum_mean: o.accumMean ?? "token",
    }),
  )
  const box = new Uint32Array(1)
  const { native } = model
  native.check(
    "bm_trainer_new",
    native.sym.bm_trainer_new(model.handle, ptrOf(cfg), cfg.byteLength, o.reference?.handle ?? 0, o.teacher?.handle ?? 0, ptr(box)),
  )
  return new Trainer(model, box[0]!)
}

export const openTrainer = (model: Model, o: TrainerOptions = {}): Effect.Effect<Trainer, NativeError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({ try: () => openTrainerSync(model, o), catch: (e) => e as NativeError }),
    (t) => Effect.sync(() => t.free()),
  )
