/**
 * Architectures without a native transformers class, in bunmind's MiniMind format (model_type "minimind") with the
 * remote code of src/export/hf/ (`addRemoteCode`): `AutoModelForCausalLM.from_pretrained(dir,
 * trust_remote_code=True)` must give bunmind's logits at every position (≤ 1e-4), the same logits token by token
 * through its KV cache, bunmind's greedy ids from `generate` (one prompt, and a left-padded batch of two), and what
 * its `save_pretrained` writes must load back in bunmind with the same logits. Each variant also has a negative control: the same
 * folder loaded with its distinguishing config key switched off must NOT match (so each comparison can fail, and
 * the feature is really exercised by the probe). Norm gains and biases are randomised (init makes them 1 and 0).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test"
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs"
import { join } from "node:path"
import { addRemoteCode, REMOTE_AUTO_MAP, REMOTE_CODE_FILES } from "../src/export/hf-remote.ts"
import { generateBatch } from "../src/model/generate.ts"
import { initModelSync, openModelSync } from "../src/model/model.ts"
import { repo } from "./helpers/cli.ts"

const out = join(repo, "tests", ".out", "interop-minimind-remote")
const script = join(repo, "tests", "interop", "minimind_remote.py")

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
})
afterAll(() => rmSync(out, { recursive: true, force: true }))

function py(args: string[]): string {
  const p = Bun.spawnSync(["python3", script, ...args], { cwd: repo })
  if (p.exitCode !== 0) throw new Error(`minimind_remote.py ${args[0]}: ${p.stderr.toString()}`)
  return p.stdout.toString()
}

const readF32 = (path: string) => new Float32Array(readFileSync(path).buffer.slice(0))

function maxDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length)
  let d = 0
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!))
  return d
}

const probe = (n: number, vocab: number, k = 977) => Array.from({ length: n }, (_, i) => (i * k + 13) % vocab)
const small = { hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 96, num_hidden_layers: 2 }

/** [label, bunmind config, config keys that switch the variant's feature off (the negative control)] */
const variants: [string, Record<string, unknown>, Record<string, unknown>][] = [
  ["minimind2-moe: shared expert, top-2", { preset: "minimind2-moe", ...small }, { n_shared_experts: 0 }],
  ["minimind2-moe with q/k-norm", { preset: "minimind2-moe", ...small, qk_norm: true }, { qk_norm: false }],
  ["minimind-v1: interleaved RoPE", { preset: "minimind-v1", ...small }, { rope_interleaved: false }],
  ["MiniMind's default YaRN (inference_rope_scaling)", { preset: "tiny", inference_rope_scaling: true, max_position_embeddings: 32768 }, { inference_rope_scaling: false }],
  ["top-1 renormalised, two shared experts", { preset: "tiny", use_moe: true, num_experts_per_tok: 1, norm_topk_prob: true, n_shared_experts: 2 }, { norm_topk_prob: false }],
  [
    "v1 with untied head, q/k/v/o/MLP biases and MiniMind rope_scaling",
    { preset: "minimind-v1", ...small, tie_word_embeddings: false, qkv_bias: true, o_bias: true, mlp_bias: true, rope_scaling: { factor: 4, original_max_position_embeddings: 16 } },
    { rope_scaling: null },
  ],
  [
    "shared experts with transformers' llama3 rope_parameters",
    { preset: "minimind2-moe", ...small, rope_parameters: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 } },
    { rope_parameters: null },
  ],
  [
    "MoE without q/k-norm, transformers' yarn rope_parameters, moe_intermediate_size",
    { preset: "tiny", use_moe: true, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 48, rope_parameters: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 16 } },
    { rope_parameters: null },
  ],
]

describe("MiniMind format → transformers (trust_remote_code)", () => {
  for (const [label, cfg, control] of variants) {
    test(label, () => {
      const dir = join(out, label.replace(/\W+/g, "_"))
      const init = initModelSync(cfg, 7)
      try {
        expect(init.saveHf(dir, "f32", "minimind")).toBe("minimind")
      } finally {
        init.free()
      }
      py(["perturb", dir])
      const m = openModelSync(dir)
      try {
        const written = addRemoteCode(dir)
        expect(written).toEqual([...REMOTE_CODE_FILES, "config.json"])
        const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"))
        expect(config.auto_map).toEqual(REMOTE_AUTO_MAP)
        expect(config.model_type).toBe("minimind")
        for (const f of REMOTE_CODE_FILES) expect(existsSync(join(dir, f))).toBe(true)

        const ids = probe(24, m.vocabSize)
        const prompt = probe(8, m.vocabSize, 331)
        const batch = [probe(5, m.vocabSize, 97), prompt]
        const ours = m.forward(ids, 1, true)
        const greedyOpts = { temperature: 0, maxNewTokens: 8, stopTokenIds: [] }
        const [greedy] = generateBatch(m, [Uint32Array.from(prompt)], greedyOpts)
        const batchGreedy = batch.map((p) => generateBatch(m, [Uint32Array.from(p)], greedyOpts)[0])
        const spec = { ids, greedy_prompt: prompt, greedy_new: 8, batch_prompts: batch, save: true, control }
        const r = JSON.parse(py(["check", dir, JSON.stringify(spec)]).trim().split("\n").at(-1)!)
        const d = maxDiff(ours, readF32(join(dir, "remote_logits.f32")))
        const dControl = maxDiff(ours, readF32(join(dir, "control_logits.f32")))
        console.log(
          `[interop-minimind-remote] ${label}: max |Δlogit| ${d.toExponential(2)}, cached ${r.cache_vs_full.toExponential(2)}; control ${JSON.stringify(control)} ${dControl.toExponential(2)}; greedy ${JSON.stringify(greedy)}`,
        )
        expect(r.class).toBe("MiniMindForCausalLM")
        expect(r.config_class).toBe("MiniMindConfig")
        expect(r.tied).toBe(cfg.tie_word_embeddings !== false)
        expect(d).toBeLessThanOrEqual(1e-4)
        expect(r.cache_vs_full).toBeLessThanOrEqual(1e-4)
        expect(r.greedy).toEqual(greedy)
        expect(r.batch_greedy).toEqual(batchGreedy)
        expect(dControl).toBeGreaterThan(1e-3)
        // transformers' save_pretrained keeps the format (and the remote code): bunmind reads it back exactly.
        const saved = join(dir, "saved")
        for (const f of REMOTE_CODE_FILES) expect(existsSync(join(saved, f))).toBe(true)
        expect(JSON.parse(readFileSync(join(saved, "config.json"), "utf8")).auto_map).toEqual(REMOTE_AUTO_MAP)
        const back = openModelSync(saved)
        try {
          expect(back.info().warnings).toEqual([])
          expect(maxDiff(back.forward(ids, 1, true), ours)).toBe(0)
        } finally {
          back.free()
        }
      } finally {
        m.free()
      }
    }, 120_000)
  }

  test("addRemoteCode refuses a folder that is not in MiniMind's format", () => {
    const dir = join(out, "llama")
    const m = initModelSync({ preset: "tiny" }, 7)
    try {
      expect(m.saveHf(dir)).toBe("llama")
    } finally {
      m.free()
    }
    expect(() => addRemoteCode(dir)).toThrow(/model_type is "llama"/)
    expect(existsSync(join(dir, REMOTE_CODE_FILES[1]))).toBe(false)
  })
})
