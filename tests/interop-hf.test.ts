/**
 * Models in from Hugging Face transformers: random models of every family bunmind imports (Llama with biases and
 * each RoPE kind, Qwen2, Qwen3, Qwen3-MoE; transformers 5 and 4.x layouts; bf16; sharded), built and saved by the
 * real transformers (tests/interop/hf_models.py), must give transformers' logits at every position. Every field of
 * each family's transformers config is used, refused or known irrelevant (no "not known" warning), and the values
 * bunmind cannot compute are refused with the field's name.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test"
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { openModelSync, type Model } from "../src/model/model.ts"
import { generateDemoData, writeDemoData } from "../src/demo/facts.ts"
import { cli, repo, shared } from "./helpers/cli.ts"

const out = join(repo, "tests", ".out", "interop-hf")
let cases: string[] = []

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  const p = Bun.spawnSync(["python3", join(repo, "tests/interop/hf_models.py"), out], { cwd: repo })
  if (p.exitCode !== 0) throw new Error(`hf_models.py failed: ${p.stderr.toString()}`)
  cases = JSON.parse(p.stdout.toString().trim().split("\n").at(-1)!)
}, 300_000)

afterAll(() => rmSync(out, { recursive: true, force: true }))

/** Max |bunmind − transformers| over every position's logits of the case's probe ids. */
export function maxLogitDiff(m: Model, dir: string): number {
  const ids: number[] = JSON.parse(readFileSync(join(dir, "ids.json"), "utf8"))
  const ref = new Float32Array(readFileSync(join(dir, "logits.f32")).buffer.slice(0))
  const got = m.forward(ids, 1, true)
  expect(got.length).toBe(ref.length)
  let d = 0
  for (let i = 0; i < ref.length; i++) d = Math.max(d, Math.abs(got[i]! - ref[i]!))
  return d
}

function load(dir: string): Model {
  return openModelSync(dir)
}

describe("transformers → bunmind", () => {
  test("every family and layout gives transformers' logits (≤ 1e-4 max abs, all 40 positions)", () => {
    expect(cases.length).toBeGreaterThanOrEqual(13)
    for (const c of cases) {
      const m = load(join(out, c))
      try {
        const d = maxLogitDiff(m, join(out, c))
        console.log(`[interop-hf] ${c}: max |Δlogit| ${d.toExponential(2)}`)
        expect(d).toBeLessThanOrEqual(1e-4)
        const unknown = m.info().warnings.filter((w) => w.includes("not known"))
        expect(unknown).toEqual([])
      } finally {
        m.free()
      }
    }
  })

  test("notes, not silence: bf16 weights are converted with a note; null token ids are accepted", () => {
    const m = load(join(out, "llama_bf16"))
    try {
      expect(m.info().warnings.some((w) => w.includes("bf16") && w.includes("f32"))).toBe(true)
    } finally {
      m.free()
    }
    const q = load(join(out, "qwen2"))
    try {
      expect(q.config.pad_token_id).toBeNull()
      expect(q.config.bos_token_id).toBeNull()
      expect(q.config.qkv_bias).toBe(true)
    } finally {
      q.free()
    }
  })

  test("each field of each family's transformers config is used, refused or known irrelevant", () => {
    const fields: Record<string, string[]> = JSON.parse(readFileSync(join(out, "fields.json"), "utf8"))
    const dirs: Record<string, string> = { llama: "llama", qwen2: "qwen2", qwen3: "qwen3", qwen3_moe: "qwen3_moe" }
    for (const [family, keys] of Object.entries(fields)) {
      expect(keys.length).toBeGreaterThan(20)
      const src = join(out, dirs[family]!)
      const cfg = JSON.parse(readFileSync(join(src, "config.json"), "utf8"))
      // Every default field present (with its default value where the saved file omits it): no unknown-field warning.
      const python = Bun.spawnSync([
        "python3", "-c",
        `import json,sys
from transformers import AutoConfig
kw = json.load(open(sys.argv[1]))
kw.pop("model_type")
c = AutoConfig.for_model(${JSON.stringify(family)}, **kw)
d = c.to_dict()
json.dump(d, open(sys.argv[2], "w"))`,
        join(src, "config.json"), join(out, `${family}.full.json`),
      ])
      if (python.exitCode !== 0) throw new Error(python.stderr.toString())
      const full = JSON.parse(readFileSync(join(out, `${family}.full.json`), "utf8"))
      for (const k of keys) expect(Object.keys(full)).toContain(k)
      const dir = join(out, `${family}-full`)
      cpSync(src, dir, { recursive: true })
      writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, ...full }))
      const m = load(dir)
      try {
        expect(m.info().warnings.filter((w) => w.includes("not known"))).toEqual([])
        expect(maxLogitDiff(m, dir)).toBeLessThanOrEqual(1e-4)
      } finally {
        m.free()
      }
    }
    // And a key nobody knows is reported by name.
    const dir = join(out, "llama-unknown")
    cpSync(join(out, "llama"), dir, { recursive: true })
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"))
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, frobnicate_heads: 3 }))
    const m = load(dir)
    try {
      expect(m.info().warnings.some((w) => w.includes("`frobnicate_heads`"))).toBe(true)
    } finally {
      m.free()
    }
  })

  test("values bunmind cannot compute are refused with the field's name", () => {
    const refuse: [string, string, (c: Record<string, any>) => void][] = [
      ["llama", "hidden_act", (c) => (c.hidden_act = "gelu")],
      ["llama", "rope_parameters.rope_type", (c) => (c.rope_parameters = { rope_type: "dynamic", factor: 2, rope_theta: 10000 })],
      ["llama", "rope_parameters.rope_type", (c) => (c.rope_parameters = { rope_type: "longrope", rope_theta: 10000 })],
      ["llama", "rope_parameters.partial_rotary_factor", (c) => (c.rope_parameters = { ...c.rope_parameters, partial_rotary_factor: 0.5 })],
      ["llama", "attention_dropout", (c) => (c.attention_dropout = 0.1)],
      ["llama", "quantization_config", (c) => (c.quantization_config = { quant_method: "gptq", bits: 4 })],
      ["llama", "model_type", (c) => (c.model_type = "mistral")],
      ["llama", "rope_parameters.factor", (c) => (c.rope_parameters = { rope_type: "linear", rope_theta: 10000 })],
      ["qwen2", "use_sliding_window", (c) => (c.use_sliding_window = true)],
      ["qwen3", "layer_types", (c) => (c.layer_types = ["full_attention", "sliding_attention"])],
      ["qwen3_moe", "decoder_sparse_step", (c) => (c.decoder_sparse_step = 2)],
      ["qwen3_moe", "mlp_only_layers", (c) => (c.mlp_only_layers = [1])],
      ["qwen2", "pad_token_id", (c) => (c.pad_token_id = "zero")],
    ]
    for (const [src, field, edit] of refuse) {
      const dir = join(out, `refuse-${src}`)
      rmSync(dir, { recursive: true, force: true })
      cpSync(join(out, src), dir, { recursive: true })
      const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"))
      edit(cfg)
      writeFileSync(join(dir, "config.json"), JSON.stringify(cfg))
      let err = ""
      try {
        load(dir).free()
      } catch (e) {
        err = (e as Error).message
      }
      expect(err).toContain(`\`${field}\``)
    }
  })

  test("an imported model trains (SFT, LoRA, DPO) and generates through the CLI, as a user would", () => {
    const data = join(out, "data")
    writeDemoData(data, generateDemoData({ seed: 2, entities: 8, biosPerEntity: 2, echoChats: 8, chitchatRepeats: 1 }))
    const tok = join(shared, "minimind")
    for (const c of ["qwen2_mm", "llama_llama3_mm"]) {
      const run = join(out, `run-${c}`)
      const common = ["--run-dir", run, "--tokenizer", tok, "--batch-size", "4", "--seq-len", "96", "--eval-fraction", "0"]
      const sft = cli(["train", "sft", ...common, "--init", join(out, c), "--data", join(data, "sft.jsonl"), "--steps", "3"])
      expect(sft.code).toBe(0)
      const published = JSON.parse(readFileSync(join(run, "sft", "model", "config.json"), "utf8"))
      expect(published.model_type).toBe(c.startsWith("qwen2") ? "qwen2" : "llama")
      if (c.startsWith("llama")) expect(published.rope_parameters.rope_type).toBe("llama3")
      const lora = cli(["train", "lora", ...common, "--data", join(data, "sft.jsonl"), "--steps", "2"])
      expect(lora.code).toBe(0)
      const dpo = cli(["train", "dpo", ...common, "--init", join(run, "sft", "model"), "--data", join(data, "dpo.jsonl"), "--steps", "2"])
      expect(dpo.code).toBe(0)
      const gen = cli(["generate", "--model", join(run, "dpo", "model"), "--prompt", "你好", "--temperature", "0", "--max-new-tokens", "8"])
      expect(gen.code).toBe(0)
      expect(gen.stderr).toMatch(/\[\d+ tokens, finish: /)
    }
  }, 600_000)
})
