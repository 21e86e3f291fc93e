/**
 * Models out to Hugging Face transformers, and MiniMind's own files in: a trained stage's published folder and
 * `bunmind export hf` of every architecture with a native class load in the real transformers without
 * trust_remote_code and give bunmind's logits (≤ 1e-4) and greedy ids; the tokenizer and chat template render as
 * bunmind renders them; architectures without a native class are refused by name. Upstream MiniMind's
 * save_pretrained folders and `.pth` state dicts (tests/interop/minimind_models.py, upstream's code unmodified)
 * load with upstream's logits.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test"
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs"
import { join } from "node:path"
import { generateBatch } from "../src/model/generate.ts"
import { initModelSync, openModelSync, type Model } from "../src/model/model.ts"
import { applyChatTemplate, loadTokenizerConfig } from "../src/tokenizer/chat-template.ts"
import { openTokenizerSync } from "../src/tokenizer/tokenizer.ts"
import { cli, python, repo, shared } from "./helpers/cli.ts"

const out = join(repo, "tests", ".out", "interop-export")
const tokDir = join(shared, "minimind")
const messages = [
  { role: "system" as const, content: "你是一个助手。" },
  { role: "user" as const, content: "1+1 等于几？Answer in English." },
]

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
})
afterAll(() => rmSync(out, { recursive: true, force: true }))

/** Runs tests/interop/hf_check.py on `dir`: transformers' logits of `ids` and what else it reports. */
function hfCheck(dir: string, spec: Record<string, unknown>): { class: string; greedy?: number[]; chat_text?: string; chat_ids?: number[]; eos: number | number[]; logits: Float32Array } {
  const p = Bun.spawnSync(["python3", join(repo, "tests/interop/hf_check.py"), dir, JSON.stringify({ messages, ...spec })], { cwd: repo })
  if (p.exitCode !== 0) throw new Error(`hf_check.py ${dir}: ${p.stderr.toString()}`)
  const r = JSON.parse(p.stdout.toString().trim().split("\n").at(-1)!)
  return { ...r, logits: new Float32Array(readFileSync(join(dir, "hf_logits.f32")).buffer.slice(0)) }
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length)
  let d = 0
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!))
  return d
}

const probe = (n: number, vocab: number) => Array.from({ length: n }, (_, i) => (i * 977 + 13) % vocab)

/** bunmind's logits of every position vs transformers' on the exported folder; also the reimport. */
function compareExported(m: Model, dir: string, label: string): number {
  const ids = probe(32, m.vocabSize)
  const ours = m.forward(ids, 1, true)
  const hf = hfCheck(dir, { ids })
  const d = maxDiff(ours, hf.logits)
  console.log(`[interop-export] ${label}: ${hf.class}, max |Δlogit| ${d.toExponential(2)}`)
  expect(d).toBeLessThanOrEqual(1e-4)
  const back = openModelSync(dir)
  try {
    expect(maxDiff(back.forward(ids, 1, true), ours)).toBe(0)
  } finally {
    back.free()
  }
  return d
}

describe("bunmind → transformers", () => {
  test("a trained stage's published model loads as is: logits, greedy ids, tokenizer, chat template, card", () => {
    const run = join(out, "run")
    const r = cli(["train", "pretrain", "--run-dir", run, "--tokenizer", tokDir, "--data", join(shared, "corpora", "tinystories_sample.txt"), "--preset", "tiny", "--steps", "100", "--batch-size", "8", "--seq-len", "128", "--lr", "6e-3", "--eval-fraction", "0"])
    expect(r.code).toBe(0)
    const dir = join(run, "pretrain", "model")
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "README.md"]) {
      expect(existsSync(join(dir, f))).toBe(true)
    }
    expect(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")).model_type).toBe("llama")
    const card = readFileSync(join(dir, "README.md"), "utf8")
    expect(card).toContain("LlamaForCausalLM")
    expect(card).toMatch(/\*\*pretrain\*\*, 100 steps/)
    const m = openModelSync(dir)
    const tok = openTokenizerSync(dir)
    try {
      const prompt = Array.from(tok.encode("Once upon a time, there was a little"))
      const [ours] = generateBatch(m, [Uint32Array.from(prompt)], { temperature: 0, maxNewTokens: 24, stopTokenIds: [] })
      const ids = probe(32, m.vocabSize)
      const hf = hfCheck(dir, { ids, greedy_prompt: prompt, greedy_new: 24 })
      expect(hf.class).toBe("LlamaForCausalLM")
      expect(maxDiff(m.forward(ids, 1, true), hf.logits)).toBeLessThanOrEqual(1e-4)
      expect(hf.greedy).toEqual(Array.from(ours!))
      expect(new Set(ours).size).toBeGreaterThan(1) // not one repeated token
      // A trained model: well below the uniform loss ln(vocab) ≈ 8.8.
      expect(JSON.parse(readFileSync(join(run, "pretrain", "summary.json"), "utf8")).final_loss).toBeLessThan(6)
      const text = applyChatTemplate(loadTokenizerConfig(dir), messages, { addGenerationPrompt: true })
      expect(hf.chat_text).toBe(text)
      expect(hf.chat_ids).toEqual(Array.from(tok.encode(text)))
      expect(hf.eos).toEqual(m.config.eos_token_id!)
    } finally {
      m.free()
      tok.free()
    }
  }, 300_000)

  const variants: [string, Record<string, unknown>, string][] = [
    ["dense q/k-norm", { preset: "tiny", qk_norm: true, tie_word_embeddings: false }, "qwen3"],
    ["routed MoE top-2", { preset: "tiny", qk_norm: true, use_moe: true, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 48 }, "qwen3_moe"],
    ["routed MoE top-2 without renormalising", { preset: "tiny", qk_norm: true, use_moe: true, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: false }, "qwen3_moe"],
    ["MiniMind YaRN", { preset: "tiny", inference_rope_scaling: true, max_position_embeddings: 32768 }, "llama"],
    ["q/k/v biases", { preset: "tiny", qkv_bias: true }, "qwen2"],
    ["q/k/v/o and MLP biases", { preset: "tiny", qkv_bias: true, o_bias: true, mlp_bias: true }, "llama"],
  ]
  for (const [label, cfg, family] of variants) {
    test(`export hf --arch auto: ${label} → ${family}`, () => {
      const src = join(out, `src-${family}-${label.replace(/\W+/g, "_")}`)
      const init = initModelSync(cfg, 7)
      init.saveHf(src)
      init.free()
      // Random biases and norm gains (init makes them 0 and 1), so that a dropped one would show in the logits.
      python(
        `import sys, torch
from safetensors.torch import load_file, save_file
p = sys.argv[1] + "/model.safetensors"
t = load_file(p)
g = torch.Generator().manual_seed(5)
for k in t:
    if k.endswith(".bias") or "norm" in k:
        t[k] = t[k] + 0.3 * torch.randn(t[k].shape, generator=g)
save_file(t, p, metadata={"format": "pt"})`,
        [src],
      )
      const m = openModelSync(src)
      try {
        const dst = `${src}-hf`
        const r = cli(["export", "hf", "--model", src, "--out", dst, "--tokenizer", tokDir])
        expect(r.code).toBe(0)
        expect(JSON.parse(readFileSync(join(dst, "config.json"), "utf8")).model_type).toBe(family)
        compareExported(m, dst, label)
      } finally {
        m.free()
      }
    }, 120_000)
  }

  test("architectures without a native class: auto keeps MiniMind's format; a forced family is refused by name", () => {
    const shared_ = initModelSync({ preset: "minimind2-moe", qk_norm: true, hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 96, num_hidden_layers: 2 }, 3)
    const v1 = initModelSync({ preset: "minimind-v1", hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 96, num_hidden_layers: 2 }, 3)
    try {
      const a = join(out, "shared-experts")
      shared_.save(a)
      const auto = cli(["export", "hf", "--model", a, "--out", `${a}-hf`])
      expect(auto.code).toBe(0)
      expect(auto.stdout).toContain("minimind")
      const forced = cli(["export", "hf", "--model", a, "--out", `${a}-q`, "--arch", "qwen3-moe"])
      expect(forced.code).not.toBe(0)
      expect(forced.stderr).toContain("n_shared_experts")
      const b = join(out, "v1")
      v1.save(b)
      const llama = cli(["export", "hf", "--model", b, "--out", `${b}-l`, "--arch", "llama"])
      expect(llama.code).not.toBe(0)
      expect(llama.stderr).toContain("rope_interleaved")
    } finally {
      shared_.free()
      v1.free()
    }
  })
})

describe("upstream MiniMind → bunmind", () => {
  const mm = join(out, "minimind")
  beforeAll(() => {
    const p = Bun.spawnSync(["python3", join(repo, "tests/interop/minimind_models.py"), mm], { cwd: repo })
    if (p.exitCode !== 0) throw new Error(`minimind_models.py: ${p.stderr.toString()}`)
  }, 300_000)

  const check = (dir: string, refDir: string) => {
    const m = openModelSync(dir)
    try {
      const ids: number[] = JSON.parse(readFileSync(join(refDir, "ids.json"), "utf8"))
      const ref = new Float32Array(readFileSync(join(refDir, "logits.f32")).buffer.slice(0))
      const d = maxDiff(m.forward(ids, 1, true), ref)
      console.log(`[interop-export] upstream ${dir.split("/").at(-1)}: max |Δlogit| ${d.toExponential(2)}`)
      expect(d).toBeLessThanOrEqual(1e-4)
      return m.info().warnings
    } finally {
      m.free()
    }
  }

  test("save_pretrained folder (model_type minimind) loads with upstream's logits, no unknown field", () => {
    const w = check(join(mm, "hf"), join(mm, "hf"))
    expect(w.filter((x) => x.includes("not known"))).toEqual([])
  })

  test("model import --pth: with upstream's config, and by recognising the preset", () => {
    const a = cli(["model", "import", "--pth", join(mm, "small.pth"), "--config", join(mm, "small-config.json"), "--out", join(mm, "small-imported"), "--tokenizer", tokDir])
    expect(a.code).toBe(0)
    check(join(mm, "small-imported"), join(mm, "small-pth"))
    const b = cli(["model", "import", "--pth", join(mm, "m3.pth"), "--out", join(mm, "m3-imported")])
    expect(b.code).toBe(0)
    expect(b.stderr).toContain("preset `minimind-3`")
    check(join(mm, "m3-imported"), join(mm, "m3-pth"))
    const bad = cli(["model", "import", "--pth", join(mm, "small.pth"), "--out", join(mm, "nope")])
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toContain("matches no MiniMind preset")
  }, 120_000)
})
