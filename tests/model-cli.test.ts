/**
 * `bunmind model logits` against the independent numpy reference (tests/reference/minimind_ref.py)
 * on random HF checkpoints of every preset shape; `model init/info`, `generate`, and bad inputs.
 */
import { describe, expect, test } from "bun:test"
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { openModelSync } from "../src/model/model.ts"
import { generateBatch, streamText } from "../src/model/generate.ts"
import { openTokenizerSync } from "../src/tokenizer/tokenizer.ts"
import { cli, repo, shared } from "./helpers/cli.ts"

const fixtures = join(repo, "tests", "fixtures", "model")
const out = join(import.meta.dir, ".out", "model-cli")
const names = readdirSync(fixtures).filter((f) => !f.includes("."))

describe("model logits parity with the numpy reference", () => {
  test("there are fixtures for every shape", () => {
    expect(names.sort()).toEqual(["dense_gqa", "dense_qknorm_lmhead", "dense_yarn", "moe_top1_qknorm", "moe_top2_shared", "v1_interleaved"])
  })
  for (const name of names) {
    test(name, () => {
      const expected = JSON.parse(readFileSync(join(fixtures, name, "expected.json"), "utf8")) as {
        sequences: { ids: number[]; logits_all: number[][] }[]
      }
      for (const seq of expected.sequences) {
        const r = cli(["model", "logits", "--model", join(fixtures, name), "--ids", seq.ids.join(",")])
        expect(r.stderr).toBe("")
        const got = JSON.parse(r.stdout) as number[]
        const want = seq.logits_all[seq.logits_all.length - 1]!
        expect(got.length).toBe(want.length)
        const maxDiff = Math.max(...got.map((g, i) => Math.abs(g - want[i]!)))
        expect(maxDiff).toBeLessThan(1e-4)
      }
    })
  }
})

describe("model commands", () => {
  test("init writes a checkpoint whose info reports the preset's size", () => {
    rmSync(out, { recursive: true, force: true })
    const r = cli(["model", "init", "--preset", "minimind2-small", "--out", join(out, "small")])
    expect(r.code).toBe(0)
    const info = JSON.parse(cli(["model", "info", "--model", join(out, "small")]).stdout)
    // MiniMind's model table: minimind2-small ≈ 25.8M parameters.
    expect(Math.abs(info.num_parameters / 1e6 - 25.8)).toBeLessThan(0.2)
    expect(info.config.num_key_value_heads).toBe(2)
    expect(info.config.rope_theta).toBe(1e6)
  })

  test("init is deterministic for a seed", () => {
    cli(["model", "init", "--preset", "tiny", "--seed", "3", "--out", join(out, "a")])
    cli(["model", "init", "--preset", "tiny", "--seed", "3", "--out", join(out, "b")])
    cli(["model", "init", "--preset", "tiny", "--seed", "4", "--out", join(out, "c")])
    const a = readFileSync(join(out, "a", "model.safetensors"))
    expect(a.equals(readFileSync(join(out, "b", "model.safetensors")))).toBe(true)
    expect(a.equals(readFileSync(join(out, "c", "model.safetensors")))).toBe(false)
  })

  test("streamed greedy generation equals batched greedy generation, and is repeatable", () => {
    cli(["model", "init", "--preset", "tiny", "--seed", "5", "--out", join(out, "g")])
    const m = openModelSync(join(out, "g"))
    const tok = openTokenizerSync(`${shared}/minimind`)
    const prompt = [1, ...tok.encode("hello")]
    const streamed: number[] = []
    for (const p of streamText(m, tok, prompt, { temperature: 0, maxNewTokens: 12, stopTokenIds: [] })) if (p.token >= 0) streamed.push(p.token)
    const [batched] = generateBatch(m, [prompt, [1, 2, 3]], { temperature: 0, maxNewTokens: 12, stopTokenIds: [] })
    expect(streamed.length).toBe(12)
    expect(batched).toEqual(streamed)
    const r1 = cli(["generate", "--model", join(out, "g"), "--tokenizer", `${shared}/minimind`, "--prompt", "你好", "--max-new-tokens", "6", "--seed", "9"])
    const r2 = cli(["generate", "--model", join(out, "g"), "--tokenizer", `${shared}/minimind`, "--prompt", "你好", "--max-new-tokens", "6", "--seed", "9"])
    expect(r1.code).toBe(0)
    expect(r1.stdout).toBe(r2.stdout)
    expect(r1.stderr).toContain("6 tokens, finish: length")
    m.free()
    tok.free()
  })

  test("bad inputs are clear errors naming what is wrong", () => {
    const dir = join(out, "bad")
    mkdirSync(dir, { recursive: true })
    copyFileSync(join(out, "g", "config.json"), join(dir, "config.json"))
    const full = readFileSync(join(out, "g", "model.safetensors"))
    writeFileSync(join(dir, "model.safetensors"), full.subarray(0, full.length >> 1))
    let r = cli(["model", "logits", "--model", dir, "--ids", "1,2"])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("model.safetensors")

    // A config that doesn't match the weights: the error names the tensor.
    copyFileSync(join(out, "g", "model.safetensors"), join(dir, "model.safetensors"))
    const cfg = JSON.parse(readFileSync(join(out, "g", "config.json"), "utf8"))
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, hidden_size: cfg.hidden_size * 2, head_dim: null }))
    r = cli(["model", "info", "--model", dir])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/model\.(embed_tokens|layers\.0)/)

    r = cli(["model", "logits", "--model", join(out, "g"), "--ids", "1,70000"])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("70000")
    r = cli(["model", "logits", "--model", join(out, "g"), "--ids", Array.from({ length: 2100 }, () => "1").join(",")])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("max_position_embeddings")
    r = cli(["model", "init", "--preset", "gpt5", "--out", join(out, "x")])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("unknown preset")
  })
})
