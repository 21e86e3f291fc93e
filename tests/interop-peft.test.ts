/**
 * LoRA adapters against the real `peft` (PyPI) and transformers, both ways
 * (tests/interop/peft_interop.py is the Python side; its `hf_model_from_bunmind` builds the
 * transformers model, Llama or Qwen3, from a bunmind model folder):
 *  (a) adapters `bunmind train lora` writes → PeftModel.from_pretrained on the base: PEFT loads
 *      every tensor and its logits (unmerged and merge_and_unload) match bunmind's within 1e-4;
 *  (b) adapters PEFT makes (get_peft_model, task_type None, A and B random) and save_pretrained
 *      → `bunmind lora merge` and Model.loadLora: logits within 1e-4 of PEFT's (rsLoRA and a
 *      regular-expression target_modules too);
 *  (c) adapters using what bunmind does not implement (DoRA, rank/alpha patterns, ...) are refused
 *      with the field named; an unknown field is a warning that names it;
 *  (d) the LoRA stage's published model is base + adapter (an independent merge from the adapter
 *      tensors, and bunmind's `lora merge` of the same adapter).
 * Base models come from `bunmind model init --preset tiny` with every matrix scaled up and norm
 * weights randomised (perturb), so that each tensor and any mistake shows in the logits.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { initModelSync, openModelSync } from "../src/model/model.ts"
import { cli, repo, shared } from "./helpers/cli.ts"

const out = join(import.meta.dir, ".out", "interop-peft")
const helper = join(repo, "tests", "interop", "peft_interop.py")
const tokenizer = join(shared, "minimind")
const sftData = join(shared, "minimind", "tiny_sft.jsonl")
const env = { RAYON_NUM_THREADS: "2" }
const VOCAB = 6400
const IDS = [
  [1, 50, 7, 6399, 3, 3, 120, 4000],
  [1, 815, 2, 64, 5000, 9, 9, 300],
]
const TOL = 1e-4
const bases = { llama: join(out, "base-llama"), qwen3: join(out, "base-qwen3") }

type Json = Record<string, any>

/** Runs the Python side on a list of ops in one process; returns their results. */
function py(name: string, ops: Json[]): Json[] {
  const specFile = join(out, `${name}.spec.json`)
  const outFile = join(out, `${name}.out.json`)
  writeFileSync(specFile, JSON.stringify({ ops }))
  const p = Bun.spawnSync(["python3", helper, specFile, outFile], { cwd: repo, env: { ...process.env, OMP_NUM_THREADS: "2", TOKENIZERS_PARALLELISM: "false" } })
  if (p.exitCode !== 0) throw new Error(`peft_interop.py (${name}) failed:\n${p.stderr.toString().slice(-4000)}`)
  return JSON.parse(readFileSync(outFile, "utf8"))
}

const flat = (x: number[][][]) => Float32Array.from(x.flat(2))
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}
const figures: Record<string, number> = {}
const record = (name: string, v: number) => {
  figures[name] = v
  return v
}

/** bunmind's logits at every position of IDS for a model folder, optionally with an adapter attached. */
function bunmindLogits(modelDir: string, adapter?: string): { logits: Float32Array; warnings: string[] } {
  const m = openModelSync(modelDir)
  try {
    const warnings = adapter ? m.loadLora(adapter, false) : []
    return { logits: m.forward(IDS.flat(), IDS.length, true), warnings }
  } finally {
    m.free()
  }
}

function loraMerge(base: string, adapter: string, dest: string) {
  return cli(["lora", "merge", "--model", base, "--adapter", adapter, "--out", dest])
}

// PEFT-made adapters: name → (base, LoraConfig kwargs, adapter_config.json edits after save_pretrained)
const ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
const GOOD: Record<string, { base: keyof typeof bases; lora: Json; edit?: Json }> = {
  "peft-llama": { base: "llama", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"], task_type: null } },
  "peft-qwen3": { base: "qwen3", lora: { r: 4, lora_alpha: 8, target_modules: ALL, task_type: null } },
  "peft-causal-lm": { base: "llama", lora: { r: 2, lora_alpha: 16, lora_dropout: 0.1, target_modules: ["k_proj", "up_proj"], task_type: "CAUSAL_LM" } },
  "peft-rslora": { base: "llama", lora: { r: 4, lora_alpha: 8, use_rslora: true, target_modules: ["q_proj", "k_proj", "up_proj"], task_type: null } },
  "peft-regex": { base: "qwen3", lora: { r: 4, lora_alpha: 8, target_modules: String.raw`.*\.(q_proj|up_proj)`, task_type: null } },
  "peft-unknown-field": { base: "llama", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj"], task_type: null }, edit: { some_future_field: 1 } },
}
// What bunmind must refuse, and the field its error must name.
const REFUSED: Record<string, { field: string; lora: Json; edit?: Json }> = {
  dora: { field: "use_dora", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj"], use_dora: true } },
  "rank-pattern": { field: "rank_pattern", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj"], rank_pattern: { q_proj: 2 } } },
  "alpha-pattern": { field: "alpha_pattern", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj"], alpha_pattern: { v_proj: 32 } } },
  layers: { field: "layers_to_transform", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj"], layers_to_transform: [0] } },
  "lora-bias": { field: "lora_bias", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj"], lora_bias: true } },
  "bias-all": { field: "bias", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj"], bias: "all" } },
  embedding: { field: "target_modules", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj", "embed_tokens"] } },
  "modules-to-save": { field: "modules_to_save", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj"] }, edit: { modules_to_save: ["lm_head"] } },
  // PEFT itself turns fan_in_fan_out off for nn.Linear; a hand-edited config says it.
  "fan-in-fan-out": { field: "fan_in_fan_out", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj"] }, edit: { fan_in_fan_out: true } },
  "task-seq-cls": { field: "task_type", lora: { r: 4, lora_alpha: 8, target_modules: ["q_proj"] }, edit: { task_type: "SEQ_CLS" } },
}

let made: Record<string, Json> = {}

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  const init = cli(["model", "init", "--preset", "tiny", "--vocab-size", String(VOCAB), "--out", bases.llama])
  if (init.code !== 0) throw new Error(init.stderr)
  // The Qwen3 flavour (QK-norm) through bunmind's engine: the CLI has no flag for it.
  const q = initModelSync({ preset: "tiny", vocab_size: VOCAB, qk_norm: true }, 7)
  q.save(bases.qwen3)
  q.free()
  const ops: Json[] = [
    { op: "perturb", model_dir: bases.llama, seed: 1, scale: 8 },
    { op: "perturb", model_dir: bases.qwen3, seed: 2, scale: 8 },
  ]
  const names = [...Object.keys(GOOD), ...Object.keys(REFUSED)]
  names.forEach((name, i) => {
    const c = GOOD[name] ?? { base: "llama" as const, ...REFUSED[name]! }
    ops.push({ op: "make_adapter", model_dir: bases[c.base], out_dir: join(out, name), seed: 100 + i, lora: c.lora, ...(c.edit ? { edit: c.edit } : {}), ...(GOOD[name] ? { ids: IDS } : {}) })
  })
  const res = py("prepare", ops)
  made = Object.fromEntries(names.map((n, i) => [n, res[2 + i]!]))
}, 300_000)

describe("PEFT adapters → bunmind", () => {
  for (const [name, c] of Object.entries(GOOD)) {
    test(`${name}: lora merge and loadLora give PEFT's logits`, () => {
      const r = made[name]!
      expect(r.files).toContain("adapter_model.safetensors")
      const peft = flat(r.peft)
      // The adapter is not a no-op in PEFT itself.
      expect(record(`${name}: PEFT adapter effect`, maxDiff(peft, flat(r.base)))).toBeGreaterThan(0.05)
      // Our base is PEFT's base: bunmind's plain logits are transformers'.
      expect(record(`${name}: base, bunmind vs transformers`, maxDiff(bunmindLogits(bases[c.base]).logits, flat(r.base)))).toBeLessThan(TOL)
      const adapter = join(out, name)
      const { logits, warnings } = bunmindLogits(bases[c.base], adapter)
      expect(record(`${name}: unmerged, bunmind vs PEFT`, maxDiff(logits, peft))).toBeLessThan(TOL)
      const merged = join(out, `${name}-merged`)
      const m = loraMerge(bases[c.base], adapter, merged)
      if (m.code !== 0) throw new Error(`lora merge ${name}: ${m.stderr}`)
      expect(record(`${name}: lora merge, bunmind vs PEFT`, maxDiff(bunmindLogits(merged).logits, peft))).toBeLessThan(TOL)
      if (name === "peft-unknown-field") {
        expect(warnings.some((w) => w.includes("`some_future_field`"))).toBe(true)
        expect(m.stderr).toContain("some_future_field")
      } else if (name === "peft-regex") {
        expect(warnings.some((w) => w.includes("regular expression"))).toBe(true)
      } else {
        // Every field PEFT writes is known to bunmind.
        expect(warnings).toEqual([])
      }
    }, 60_000)
  }
})

describe("adapters bunmind cannot apply as PEFT does are refused", () => {
  for (const [name, c] of Object.entries(REFUSED)) {
    test(`${name}: refused, naming \`${c.field}\``, () => {
      const adapter = join(out, name)
      // PEFT wrote the field as given (target_modules: a set, in any order)
      const norm = (v: unknown) => (Array.isArray(v) ? [...v].sort() : v)
      if (!c.edit) expect(norm(made[name]!.config[c.field])).toEqual(norm(c.lora[c.field]))
      const r = loraMerge(bases.llama, adapter, join(out, `${name}-merged`))
      expect(r.code).not.toBe(0)
      expect(r.stderr).toContain(`\`${c.field}\``)
      expect(r.stderr).toContain(join(adapter, "adapter_config.json"))
      const m = openModelSync(bases.llama)
      try {
        expect(() => m.loadLora(adapter)).toThrow(c.field)
        expect(m.info().has_lora).toBe(false)
      } finally {
        m.free()
      }
    }, 30_000)
  }
})

describe("bunmind adapters → PEFT; the LoRA stage publishes base + adapter", () => {
  // name → base, extra flags of `bunmind train lora`, the scale alpha/r (or alpha/√r) it implies
  const RUNS = {
    llama: { base: "llama", flags: [], scale: 2 },
    qwen3: { base: "qwen3", flags: [], scale: 2 },
    "llama-rslora": { base: "llama", flags: ["--rslora"], scale: 4 },
  } as const
  type Run = keyof typeof RUNS
  const runDir = (k: Run) => join(out, `run-${k}`)
  const baseOf = (k: Run) => bases[RUNS[k].base]
  let oracle: Record<string, { peft: Json; published: Json; merged: Json }> = {}

  beforeAll(() => {
    const ops: Json[] = []
    for (const k of Object.keys(RUNS) as Run[]) {
      const run = runDir(k)
      const t = cli(
        ["train", "lora", "--run-dir", run, "--init", baseOf(k), "--tokenizer", tokenizer, "--data", sftData, "--seq-len", "64", "--steps", "6", "--batch-size", "2", "--lr", "2e-2",
          "--rank", "4", "--lora-alpha", "8", "--targets", ALL.join(","), "--eval-fraction", "0", ...RUNS[k].flags],
        undefined,
        env,
      )
      if (t.code !== 0) throw new Error(`train lora (${k}): ${t.stderr}`)
      const m = loraMerge(baseOf(k), join(run, "lora", "adapter"), join(run, "merged"))
      if (m.code !== 0) throw new Error(`lora merge (${k}): ${m.stderr}`)
      ops.push({ op: "peft_logits", model_dir: baseOf(k), adapter_dir: join(run, "lora", "adapter"), ids: IDS })
      ops.push({ op: "merge_check", base_dir: baseOf(k), adapter_dir: join(run, "lora", "adapter"), merged_dir: join(run, "lora", "model") })
      ops.push({ op: "merge_check", base_dir: baseOf(k), adapter_dir: join(run, "lora", "adapter"), merged_dir: join(run, "merged") })
    }
    const res = py("oracle", ops)
    oracle = Object.fromEntries((Object.keys(RUNS) as Run[]).map((k, i) => [k, { peft: res[3 * i]!, published: res[3 * i + 1]!, merged: res[3 * i + 2]! }]))
  }, 300_000)

  for (const k of Object.keys(RUNS) as Run[]) {
    test(`${k}: the adapter folder is PEFT's layout`, () => {
      const adapter = join(runDir(k), "lora", "adapter")
      const cfg = JSON.parse(readFileSync(join(adapter, "adapter_config.json"), "utf8"))
      expect(cfg).toMatchObject({ peft_type: "LORA", task_type: "CAUSAL_LM", r: 4, lora_alpha: 8, lora_dropout: 0, bias: "none", fan_in_fan_out: false, use_rslora: RUNS[k].flags.length > 0, use_dora: false })
      expect([...cfg.target_modules].sort()).toEqual([...ALL].sort())
      const load = oracle[k]!.peft.load
      // 2 layers × 7 projections × (A, B), every one now the value of PEFT's LoRA parameter.
      expect(load.file_tensors).toBe(28)
      expect(load.peft_lora_params).toBe(28)
      expect(load.unmatched).toEqual([])
      expect(load.differ).toEqual([])
      expect(load.warnings.filter((w: string) => /missing|unexpected/i.test(w))).toEqual([])
    })

    test(`${k}: PEFT's logits (unmerged and merge_and_unload) are bunmind's`, () => {
      const o = oracle[k]!.peft
      const peft = flat(o.peft)
      expect(record(`${k}: bunmind adapter effect in PEFT`, maxDiff(peft, flat(o.base)))).toBeGreaterThan(0.05)
      const adapter = join(runDir(k), "lora", "adapter")
      expect(record(`${k}: unmerged, bunmind vs PEFT`, maxDiff(bunmindLogits(baseOf(k), adapter).logits, peft))).toBeLessThan(TOL)
      const merged = bunmindLogits(join(runDir(k), "merged")).logits
      expect(record(`${k}: lora merge vs PEFT merge_and_unload`, maxDiff(merged, flat(o.peft_merged)))).toBeLessThan(TOL)
      expect(record(`${k}: published model vs PEFT`, maxDiff(bunmindLogits(join(runDir(k), "lora", "model")).logits, peft))).toBeLessThan(TOL)
    })

    test(`${k}: the published <run>/lora/model is base + s·B·A`, () => {
      for (const [what, c] of [["published", oracle[k]!.published], ["lora merge", oracle[k]!.merged]] as const) {
        expect(c.error).toBeUndefined()
        expect(c.modules).toBe(14)
        expect(c.scale).toBe(RUNS[k].scale)
        expect(record(`${k}: ${what} weights vs independent merge`, c.max_diff_adapted)).toBeLessThan(1e-5)
        expect(c.max_diff_other).toBe(0) // the other tensors are the base's
        expect(c.max_change_from_base).toBeGreaterThan(1e-3) // and the merge changed the adapted ones
      }
      const published = bunmindLogits(join(runDir(k), "lora", "model")).logits
      const merged = bunmindLogits(join(runDir(k), "merged")).logits
      expect(record(`${k}: published vs lora merge logits`, maxDiff(published, merged))).toBeLessThan(1e-5)
      expect(maxDiff(published, bunmindLogits(baseOf(k)).logits)).toBeGreaterThan(0.05)
    })
  }

  test("figures", () => {
    console.log(JSON.stringify(figures, null, 1))
    expect(Object.keys(figures).length).toBeGreaterThan(10)
  })
})
