/**
 * A model in the native library (MiniMind family on candle): load / init / save HF checkpoints,
 * logits, evaluation loss, LoRA adapters. Handles are owned by Effect scopes (`loadModel`,
 * `initModel`); methods are synchronous native calls that throw `NativeError`.
 */
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { ptr } from "bun:ffi"
import { Effect, Scope } from "effect"
import { NativeError, NativeLoadError } from "../native/errors.ts"
import { loadNativeSync, ptrOf, utf8, type Device, type NativeLib } from "../native/library.ts"

export interface ModelConfig {
  hidden_size: number
  num_hidden_layers: number
  num_attention_heads: number
  num_key_value_heads?: number | null
  head_dim?: number | null
  intermediate_size: number
  vocab_size: number
  max_position_embeddings: number
  rope_theta: number
  rms_norm_eps: number
  tie_word_embeddings: boolean
  use_moe: boolean
  num_experts: number
  num_experts_per_tok: number
  n_shared_experts: number
  qk_norm?: boolean | null
  rope_interleaved?: boolean
  dropout: number
  /** null where the checkpoint has none (transformers writes `null`). */
  bos_token_id: number | null
  eos_token_id: number | null
  pad_token_id: number | null
  model_type: string
  [k: string]: unknown
}

export interface ModelInfo {
  config: ModelConfig
  /** The transformers family that computes this model natively (`llama`, `qwen2`, `qwen3`, `qwen3_moe`), or null. */
  hf_family: string | null
  /** Why no native family can (names the feature), when `hf_family` is null. */
  hf_family_unavailable: string | null
  num_parameters: number
  dtype: string
  device: string
  warnings: string[]
  has_lora: boolean
}

export const HF_ARCHS = ["auto", "llama", "qwen2", "qwen3", "qwen3-moe", "minimind"] as const
export type HfArch = (typeof HF_ARCHS)[number]

export const PRESETS = ["minimind-v1", "minimind2-small", "minimind2", "minimind2-moe", "minimind-3", "minimind-3-moe", "tiny"] as const

export type ModelError = NativeError | NativeLoadError

export class Model {
  #freed = false
  #info?: ModelInfo
  #stops?: number[]

  constructor(readonly native: NativeLib, readonly handle: number, readonly source: string) {}

  info(): ModelInfo {
    if (!this.#info) {
      this.#info = JSON.parse(this.native.readString("bm_model_info", (b, c, l) => this.native.sym.bm_model_info(this.handle, b, c, l)))
    }
    return this.#info!
  }

  get config(): ModelConfig {
    return this.info().config
  }

  /**
   * The ids that end a generation by default: config.json's eos_token_id and the eos ids of the model directory's
   * generation_config.json (transformers' order of precedence: both apply), deduplicated.
   */
  get stopTokenIds(): number[] {
    if (!this.#stops) {
      const ids: unknown[] = [this.config.eos_token_id]
      const gen = join(this.source, "generation_config.json")
      if (existsSync(gen)) {
        let g: { eos_token_id?: unknown }
        try {
          g = JSON.parse(readFileSync(gen, "utf8"))
        } catch (e) {
          throw new Error(`${gen}: not valid JSON: ${(e as Error).message}`)
        }
        ids.push(...(Array.isArray(g.eos_token_id) ? g.eos_token_id : [g.eos_token_id]))
      }
      this.#stops = [...new Set(ids.filter((i): i is number => Number.isInteger(i) && (i as number) >= 0 && (i as number) < this.vocabSize))]
    }
    return this.#stops
  }

  get vocabSize(): number {
    return this.config.vocab_size
  }

  /** Logits of the last position of each row (`[b, V]`), or of every position (`[b, t, V]`). */
  forward(ids: ArrayLike<number>, b = 1, allPositions = false): Float32Array {
    const arr = ids instanceof Uint32Array ? ids : Uint32Array.from(ids)
    const t = arr.length / b
    if (!Number.isInteger(t) || t === 0) throw new RangeError(`forward: ${arr.length} ids do not split into ${b} rows`)
    const out = new Float32Array((allPositions ? b * t : b) * this.vocabSize)
    this.native.check("bm_model_forward", this.native.sym.bm_model_forward(this.handle, ptrOf(arr), b, t, allPositions ? 1 : 0, ptr(out), out.length))
    return out
  }

  /** Masked cross-entropy (sum over counted targets, count) of `[b, t]` rows. */
  loss(ids: Uint32Array, targets: Uint32Array, mask: Float32Array, b: number): { sum: number; count: number } {
    const out = new Float64Array(2)
    this.native.check("bm_model_loss", this.native.sym.bm_model_loss(this.handle, ptrOf(ids), ptrOf(targets), ptrOf(mask), b, ids.length / b, ptr(out)))
    return { sum: out[0]!, count: out[1]! }
  }

  /**
   * Writes `config.json` + `model.safetensors` (atomically) in f32, f16 or bf16. LoRA adapters
   * attached to this model (`loadLora` without merging, a LoRA trainer's live model) are folded
   * into the written weights; this model keeps them attached.
   */
  save(dir: string, dtype: "f32" | "f16" | "bf16" = "f32"): void {
    const d = utf8(dir)
    this.native.check("bm_model_save", this.native.sym.bm_model_save(this.handle, ptrOf(d), d.byteLength, { f32: 0, f16: 1, bf16: 2 }[dtype]))
  }

  /**
   * Writes `config.json` + `model.safetensors` in a transformers family's format (`auto`: the native family that
   * computes this model, else MiniMind's); returns the family's model_type.
   */
  saveHf(dir: string, dtype: "f32" | "f16" | "bf16" = "f32", arch: HfArch = "auto"): string {
    const d = utf8(dir)
    const a = utf8(arch)
    const code = { f32: 0, f16: 1, bf16: 2 }[dtype]
    return JSON.parse(this.native.readString("bm_model_save_hf", (b, c, l) => this.native.sym.bm_model_save_hf(this.handle, ptrOf(d), d.byteLength, code, ptrOf(a), a.byteLength, b, c, l)))
  }

  /**
   * Attach LoRA adapters from `dir` (PEFT's layout: adapter_config.json + adapter_model.safetensors,
   * from bunmind or PEFT's `save_pretrained`); `merge` folds them into the base weights. Returns
   * the warnings of this load (unknown adapter_config.json fields, ...); they also join `info().warnings`.
   */
  loadLora(dir: string, merge = false): string[] {
    const before = this.info().warnings.length
    const d = utf8(dir)
    this.native.check("bm_model_load_lora", this.native.sym.bm_model_load_lora(this.handle, ptrOf(d), d.byteLength, merge ? 1 : 0))
    this.#info = undefined
    return this.info().warnings.slice(before)
  }

  free(): void {
    if (this.#freed) return
    this.#freed = true
    this.native.check("bm_model_free", this.native.sym.bm_model_free(this.handle))
  }
}

/** Loads a model directory onto `device` (default: the library's kind, i.e. `cpu` or `cuda:0`). */
export function openModelSync(dir: string, native: NativeLib = loadNativeSync("cpu"), device: Device = native.device): Model {
  const d = utf8(dir)
  const dev = utf8(device)
  const box = new Uint32Array(1)
  native.check("bm_model_load_on", native.sym.bm_model_load_on(ptrOf(d), d.byteLength, ptrOf(dev), dev.byteLength, ptr(box)))
  return new Model(native, box[0]!, dir)
}

/** `config`: `{ preset: name, ...overrides }` or a full HF config object; created on `device`. */
export function initModelSync(config: Record<string, unknown>, seed = 42, native: NativeLib = loadNativeSync("cpu"), device: Device = native.device): Model {
  const c = utf8(JSON.stringify({ ...config, device }))
  const box = new Uint32Array(1)
  native.check("bm_model_init", native.sym.bm_model_init(ptrOf(c), c.byteLength, BigInt(seed), ptr(box)))
  return new Model(native, box[0]!, `init:${JSON.stringify(config)}`)
}

/**
 * A model from a PyTorch state dict (`torch.save`; MiniMind's `.pth`). `config`: `{ preset, ...overrides }`, a full
 * config.json object, or `{}` to pick the MiniMind preset the tensors match.
 */
export function importPthSync(path: string, config: Record<string, unknown> = {}, native: NativeLib = loadNativeSync("cpu")): Model {
  const p = utf8(path)
  const c = utf8(JSON.stringify(config))
  const box = new Uint32Array(1)
  native.check("bm_model_import_pth", native.sym.bm_model_import_pth(ptrOf(p), p.byteLength, ptrOf(c), c.byteLength, ptr(box)))
  return new Model(native, box[0]!, path)
}

const scoped = (make: () => Model): Effect.Effect<Model, ModelError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({ try: make, catch: (e) => e as ModelError }),
    (m) => Effect.sync(() => m.free()),
  )

export const loadModel = (dir: string, device: Device = "cpu") => scoped(() => openModelSync(dir, loadNativeSync(device), device))
export const importPth = (path: string, config: Record<string, unknown> = {}) => scoped(() => importPthSync(path, config))
export const initModel = (config: Record<string, unknown>, seed = 42, device: Device = "cpu") =>
  scoped(() => initModelSync(config, seed, loadNativeSync(device), device))
