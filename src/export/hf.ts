/**
 * `bunmind export hf`: a model folder that `transformers.AutoModelForCausalLM.from_pretrained` loads without
 * `trust_remote_code` whenever a native class computes the model (dense → Llama / Qwen2, q/k-norm → Qwen3, routed
 * MoE → Qwen3-MoE; the engine picks and checks the family, `src/../core-rs/engine/src/model/hf.rs`), with what a Hub
 * repository needs beside the weights:
 *
 *   config.json, model.safetensors      the family's own config (transformers 5 layout, 4.x keys too), f32/bf16/f16
 *   tokenizer.json, tokenizer_config.json (chat_template inline), chat_template.jinja
 *   generation_config.json              bos/eos/pad and bunmind's sampling defaults; eos = every stop id
 *   README.md                           a model card: architecture, parameters, data and stages of the run
 *
 * The same files are written next to every stage's published model (`writeHfExtras`).
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync } from "node:fs"
import { basename, dirname, join, resolve } from "node:path"
import { Data } from "effect"
import { DEFAULT_GENERATION } from "../model/generate.ts"
import { openModelSync, type HfArch, type Model } from "../model/model.ts"
import { loadTokenizerConfig } from "../tokenizer/chat-template.ts"
import { writeFileAtomic, writeJsonAtomic } from "../util/fs.ts"
import { addRemoteCode } from "./hf-remote.ts"

export class HfExportError extends Data.TaggedError("HfExportError")<{ readonly message: string }> {}

export interface HfExportOptions {
  readonly model: string
  readonly out: string
  /** tokenizer.json or its directory (default: next to the model, as everywhere else). */
  readonly tokenizer?: string
  readonly arch?: HfArch
  readonly dtype?: "f32" | "f16" | "bf16"
}

export interface HfExportReport {
  readonly out: string
  readonly family: string
  /** Whether transformers loads it without trust_remote_code. */
  readonly native: boolean
  readonly files: string[]
}

const TRANSFORMERS_CLASS: Record<string, string> = {
  llama: "LlamaForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  qwen3: "Qwen3ForCausalLM",
  qwen3_moe: "Qwen3MoeForCausalLM",
  minimind: "MiniMindForCausalLM",
}

/** The directory holding tokenizer.json for `tokenizer` (a file or a directory). */
function tokenizerDir(tokenizer: string): string {
  return existsSync(join(tokenizer, "tokenizer.json")) ? tokenizer : dirname(tokenizer)
}

/** The chat template of a tokenizer directory, with transformers' precedence (see `loadTokenizerConfig`); none if it has none. */
function chatTemplate(dir: string, config: Record<string, unknown>): string | undefined {
  const jinja = join(dir, "chat_template.jinja")
  if (existsSync(join(dir, "tokenizer_config.json")) && (config.chat_template != null || existsSync(jinja))) return loadTokenizerConfig(dir).chatTemplate
  return existsSync(jinja) ? readFileSync(jinja, "utf8") : undefined
}

/**
 * Tokenizer files, generation_config.json and the model card for the model folder `dir` (already holding
 * config.json + weights). `tokenizer`: where tokenizer.json lives (may be `dir` itself).
 */
export function writeHfExtras(dir: string, model: Model, tokenizer: string | undefined, family: string): string[] {
  const files: string[] = []
  let tokCfg: Record<string, unknown> = {}
  if (tokenizer !== undefined) {
    const src = tokenizerDir(tokenizer)
    if (!existsSync(join(src, "tokenizer.json"))) throw new HfExportError({ message: `${tokenizer}: no tokenizer.json there` })
    if (resolve(src) !== resolve(dir)) copyFileSync(join(src, "tokenizer.json"), join(dir, "tokenizer.json"))
    files.push("tokenizer.json")
    const cfgPath = join(src, "tokenizer_config.json")
    if (existsSync(cfgPath)) {
      try {
        tokCfg = JSON.parse(readFileSync(cfgPath, "utf8"))
      } catch (e) {
        throw new HfExportError({ message: `${cfgPath}: not valid JSON: ${(e as Error).message}` })
      }
    }
    const template = chatTemplate(src, tokCfg)
    const out: Record<string, unknown> = { tokenizer_class: "PreTrainedTokenizerFast", ...tokCfg }
    if (template !== undefined) {
      out.chat_template = template
      writeFileAtomic(join(dir, "chat_template.jinja"), template)
      files.push("chat_template.jinja")
    }
    if (out.model_max_length === undefined || Number(out.model_max_length) > model.config.max_position_embeddings) {
      out.model_max_length = model.config.max_position_embeddings
    }
    writeJsonAtomic(join(dir, "tokenizer_config.json"), out)
    files.push("tokenizer_config.json")
  }
  const stops = model.stopTokenIds
  const gen = {
    bos_token_id: model.config.bos_token_id,
    eos_token_id: stops.length === 1 ? stops[0] : stops,
    pad_token_id: model.config.pad_token_id,
    do_sample: DEFAULT_GENERATION.temperature > 0,
    temperature: DEFAULT_GENERATION.temperature,
    top_p: DEFAULT_GENERATION.topP,
    ...(DEFAULT_GENERATION.topK > 0 ? { top_k: DEFAULT_GENERATION.topK } : {}),
    repetition_penalty: DEFAULT_GENERATION.repetitionPenalty,
    max_new_tokens: DEFAULT_GENERATION.maxNewTokens,
  }
  writeJsonAtomic(join(dir, "generation_config.json"), gen)
  files.push("generation_config.json")
  // No native class: bunmind's own modelling code, for `trust_remote_code=True`.
  if (family === "minimind") files.push(...addRemoteCode(dir).filter((f) => f !== "config.json"))
  writeFileAtomic(join(dir, "README.md"), modelCard(dir, model, family))
  files.push("README.md")
  return files
}

/** Stage summaries of the run a published model belongs to (`<run>/<stage>/model`), in stage order. */
function runStages(dir: string): { stage: string; summary: Record<string, unknown> }[] {
  const run = resolve(dir, "..", "..")
  if (basename(dir) !== "model" || !existsSync(run)) return []
  const out: { stage: string; summary: Record<string, unknown>; t: number }[] = []
  for (const stage of readdirSync(run)) {
    const f = join(run, stage, "summary.json")
    if (!existsSync(f)) continue
    try {
      out.push({ stage, summary: JSON.parse(readFileSync(f, "utf8")), t: statSync(f).mtimeMs })
    } catch {
      // A summary being written right now, or damaged: the card lists what it can read.
    }
  }
  return out.sort((a, b) => a.t - b.t).map(({ stage, summary }) => ({ stage, summary }))
}

const fmtCount = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : `${(n / 1e3).toFixed(1)}K`)

function modelCard(dir: string, model: Model, family: string): string {
  const c = model.config
  const info = model.info()
  const cls = TRANSFORMERS_CLASS[family] ?? family
  const native = family !== "minimind"
  const rows: [string, string][] = [
    ["architecture", `${cls}${native ? "" : " (MiniMind's; not a native transformers class: load with trust_remote_code=True)"}`],
    ["parameters", fmtCount(info.num_parameters)],
    ["layers × hidden", `${c.num_hidden_layers} × ${c.hidden_size}`],
    ["attention heads (kv)", `${c.num_attention_heads} (${c.num_key_value_heads ?? c.num_attention_heads})`],
    ["feed-forward", c.use_moe ? `MoE: ${c.num_experts} experts, top-${c.num_experts_per_tok}${c.n_shared_experts ? `, ${c.n_shared_experts} shared` : ""}` : `dense SwiGLU ${c.intermediate_size}`],
    ["context", String(c.max_position_embeddings)],
    ["vocabulary", String(c.vocab_size)],
    ["RoPE θ", String(c.rope_theta)],
  ]
  const stages = runStages(dir)
  const stageLines = stages.map(({ stage, summary: s }) => {
    const parts = [`**${stage}**`]
    if (typeof s.steps === "number") parts.push(`${s.steps} steps`)
    if (typeof s.tokens === "number") parts.push(`${fmtCount(s.tokens)} tokens`)
    if (typeof s.final_loss === "number") parts.push(`final loss ${s.final_loss.toFixed(4)}`)
    if (typeof s.final_eval_loss === "number") parts.push(`eval loss ${s.final_eval_loss.toFixed(4)}`)
    if (typeof s.dpo_accuracy === "number") parts.push(`DPO accuracy ${(s.dpo_accuracy * 100).toFixed(1)}%`)
    return `- ${parts.join(", ")}`
  })
  const load = [
    "```python",
    "from transformers import AutoModelForCausalLM, AutoTokenizer",
    'tok = AutoTokenizer.from_pretrained("PATH")',
    `model = AutoModelForCausalLM.from_pretrained("PATH"${native ? "" : ", trust_remote_code=True"})`,
    'ids = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True, return_tensors="pt")',
    "print(tok.decode(model.generate(ids, max_new_tokens=64)[0]))",
    "```",
  ]
  return [
    "---",
    "library_name: transformers",
    "pipeline_tag: text-generation",
    "tags: [bunmind, minimind]",
    "---",
    "",
    `# ${basename(resolve(dir))}`,
    "",
    "A small language model trained with bunmind (MiniMind-style training on Bun + Rust/candle), exported in the Hugging Face format.",
    "",
    "| | |",
    "|---|---|",
    ...rows.map(([k, v]) => `| ${k} | ${v} |`),
    "",
    ...(stageLines.length ? ["## Training", "", ...stageLines, ""] : []),
    "## Use",
    "",
    ...load,
    "",
    "With bunmind: `bun run bunmind chat --model PATH`.",
    "",
  ].join("\n")
}

/**
 * Completes a model folder bunmind just saved (a stage's published model, a merge): tokenizer files when `tokenizer`
 * (a file or directory, or the directory above it) has them, generation_config.json and the model card.
 */
export function publishHf(dir: string, tokenizer?: string): void {
  const family = String(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")).model_type ?? "minimind")
  let tok: string | undefined
  for (const t of tokenizer === undefined ? [] : [tokenizer, resolve(tokenizer, "..")]) {
    if (existsSync(join(tokenizerDir(t), "tokenizer.json"))) {
      tok = tokenizerDir(t)
      break
    }
  }
  const model = openModelSync(dir)
  try {
    writeHfExtras(dir, model, tok, family)
  } finally {
    model.free()
  }
}

/** Loads `model`, writes it in a transformers family's format with the tokenizer, generation config and card. */
export function exportHf(o: HfExportOptions): HfExportReport {
  if (!existsSync(o.model) || !statSync(o.model).isDirectory()) {
    throw new HfExportError({ message: `${o.model}: not a model directory (config.json + model.safetensors)` })
  }
  if (resolve(o.out) === resolve(o.model)) throw new HfExportError({ message: `--out ${o.out}: must differ from --model` })
  const model = openModelSync(o.model)
  try {
    mkdirSync(o.out, { recursive: true })
    const family = model.saveHf(o.out, o.dtype ?? "f32", o.arch ?? "auto")
    const extras = writeHfExtras(o.out, model, o.tokenizer, family)
    return { out: o.out, family, native: family !== "minimind", files: ["config.json", "model.safetensors", ...extras] }
  } finally {
    model.free()
  }
}
