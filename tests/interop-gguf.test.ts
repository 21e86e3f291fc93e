/**
 * `bunmind export gguf` against the real llama.cpp (llama-cpp-python, tests/interop/llama_cpp_check.py):
 *  - every architecture the exporter writes (llama: dense, interleaved RoPE, untied head + YaRN, MoE without
 *    QK-norm; qwen3: dense QK-norm, interleaved; qwen3moe) loads in llama.cpp, and its logits at every position
 *    match bunmind's forward within 1e-3 (f32; f32 KV cache), greedy decoding gives the same 16 ids;
 *  - f16 and q8_0 files load and stay close (looser bounds, top-1 agreement);
 *  - a briefly trained model (non-degenerate greedy text) agrees token for token;
 *  - llama.cpp's tokenization of the exported vocabulary equals HF tokenizers' on English, Chinese, digits,
 *    whitespace runs and special tokens, with and without special tokens added;
 *  - refusals name the field (shared experts, norm_topk_prob, YaRN betas, a tokenizer normalizer, a vocab
 *    mismatch) and write no file;
 *  - the Modelfile's TEMPLATE, rendered by Go's text/template as Ollama fills it, equals bunmind's Jinja render.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { initModelSync, openModelSync } from "../src/model/model.ts"
import { applyChatTemplate, loadTokenizerConfig, type ChatMessage } from "../src/tokenizer/chat-template.ts"
import { cli, repo, shared } from "./helpers/cli.ts"

const out = join(import.meta.dir, ".out", "interop-gguf")
const tokDir = join(shared, "minimind")
const env = { RAYON_NUM_THREADS: "2" }
const GREEDY = 16

type Cfg = Record<string, unknown>
const tiny = (extra: Cfg): Cfg => ({ preset: "tiny", vocab_size: 6400, ...extra })
const MODELS: Record<string, { cfg: Cfg; arch: string; types: ("f32" | "f16" | "q8_0")[]; len?: number }> = {
  dense: { cfg: tiny({}), arch: "llama", types: ["f32", "f16", "q8_0"] },
  qwen3: { cfg: tiny({ qk_norm: true, head_dim: 32 }), arch: "qwen3", types: ["f32", "f16", "q8_0"] },
  moe: { cfg: tiny({ qk_norm: true, use_moe: true, num_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 64 }), arch: "qwen3moe", types: ["f32", "f16", "q8_0"] },
  moe_llama: { cfg: tiny({ use_moe: true, num_experts: 4, num_experts_per_tok: 2 }), arch: "llama", types: ["f32"] },
  interleaved: { cfg: tiny({ rope_interleaved: true }), arch: "llama", types: ["f32"] },
  interleaved_qk: { cfg: tiny({ rope_interleaved: true, qk_norm: true }), arch: "qwen3", types: ["f32"] },
  // YaRN over an original context of 16 (positions up to 40 here), a non-default attention factor, untied head.
  yarn: {
    cfg: tiny({ tie_word_embeddings: false, rope_scaling: { type: "yarn", factor: 4, original_max_position_embeddings: 16, attention_factor: 1.25 } }),
    arch: "llama",
    types: ["f32"],
    len: 40,
  },
}

const modelDir = (name: string) => join(out, "models", name)
const gguf = (name: string, type: string) => join(out, "gguf", `${name}-${type}`, `${name}.gguf`)

/** A fixed prompt of `n` ids from the MiniMind vocab (no special tokens). */
const promptIds = (n: number) => Array.from({ length: n }, (_, i) => 40 + ((i * 977 + 13) % 6000))

function exportOne(model: string, file: string, type: string, extra: string[] = []) {
  mkdirSync(join(file, ".."), { recursive: true })
  return cli(["export", "gguf", "--model", model, "--out", file, "--type", type, "--tokenizer", tokDir, ...extra], undefined, env)
}

/** bunmind's logits at every position `[T][V]` and its greedy continuation (full forward per step). */
function bunmind(dir: string, ids: number[]) {
  const m = openModelSync(dir)
  try {
    const V = m.vocabSize
    const all = m.forward(ids, 1, true)
    const logits = Array.from({ length: ids.length }, (_, t) => all.subarray(t * V, (t + 1) * V))
    const seq = [...ids]
    const greedy: number[] = []
    for (let i = 0; i < GREEDY; i++) {
      const last = m.forward(seq)
      let best = 0
      for (let v = 1; v < V; v++) if (last[v]! > last[best]!) best = v
      greedy.push(best)
      seq.push(best)
    }
    return { logits, greedy }
  } finally {
    m.free()
  }
}

function maxAbs(a: ArrayLike<number>[], b: number[][]): number {
  expect(b.length).toBe(a.length)
  let m = 0
  for (let t = 0; t < a.length; t++) {
    expect(b[t]!.length).toBe(a[t]!.length)
    for (let v = 0; v < a[t]!.length; v++) m = Math.max(m, Math.abs(a[t]![v]! - b[t]![v]!))
  }
  return m
}

const argmax = (x: ArrayLike<number>) => {
  let best = 0
  for (let v = 1; v < x.length; v++) if (x[v]! > x[best]!) best = v
  return best
}

const TEXTS = [
  "Once upon a time, there was a little girl named Lily. She loved to play outside!",
  "你好，世界！今天天气很好，我们一起去公园散步吧。",
  "数字 0 12 345 6789 3.14159 2024年10月1日 第100名 1,000,000",
  "I'm sure you'll like it; they've said 'RE' and 'll' don't split... We'Ve a'lL",
  "tabs\tand  double  spaces\n\nnew lines\n \n   trailing   ",
  "   leading spaces and\r\nwindows line ends\u00a0nbsp",
  "emoji 🚀🦙😶‍🌫️ accents café naïve e\u0301 Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
  "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
  "code: def f(x):\n    return x**2 + 1  # comment\n\tif (a && b) { c[i] = \"s\"; }",
  "<|endoftext|>text after the end token<tool_call>{\"name\": \"f\"}</tool_call>",
]

let llama: {
  jobs: { logits: number[][]; greedy: number[]; n_vocab: number; arch: string }[]
  tokenize: { llama: number[][]; llama_special: number[][]; hf: number[][]; hf_special: number[][]; llama_detok: string[]; hf_detok: string[] }[]
}
const jobIndex = new Map<string, number>()
const exports = new Map<string, ReturnType<typeof cli>>()
const trained = join(out, "run")
const trainedModel = join(trained, "pretrain", "model")

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(join(out, "models"), { recursive: true })
  for (const [name, m] of Object.entries(MODELS)) {
    const model = initModelSync(m.cfg, 7)
    model.save(modelDir(name))
    model.free()
  }
  // A briefly pretrained tiny model (TinyStories), so greedy decoding is not a repeated token.
  const stories = readFileSync(join(shared, "corpora", "tinystories_sample.txt"), "utf8").slice(0, 200_000)
  writeFileSync(join(out, "stories.txt"), stories)
  const t = cli(
    ["train", "pretrain", "--run-dir", trained, "--data", join(out, "stories.txt"), "--tokenizer", tokDir, "--preset", "tiny", "--steps", "120", "--batch-size", "8", "--seq-len", "64", "--lr", "3e-3", "--eval-every", "1000", "--save-every", "1000"],
    undefined,
    { RAYON_NUM_THREADS: "2" },
  )
  if (t.code !== 0) throw new Error(`pretraining the fixture failed: ${t.stderr}`)

  const jobs: { gguf: string; ids: number[]; greedy: number }[] = []
  const add = (key: string, dir: string, type: string, len: number) => {
    const file = gguf(key, type)
    const r = exportOne(dir, file, type)
    exports.set(`${key}-${type}`, r)
    if (r.code !== 0) throw new Error(`export ${key} ${type} failed: ${r.stderr}`)
    jobIndex.set(`${key}-${type}`, jobs.length)
    jobs.push({ gguf: file, ids: promptIds(len), greedy: GREEDY })
  }
  for (const [name, m] of Object.entries(MODELS)) for (const type of m.types) add(name, modelDir(name), type, m.len ?? 12)
  // The trained model, and the same weights with YaRN (logits of a real scale, so a wrong rope mapping shows).
  const trainedYarn = join(out, "models", "trained_yarn")
  cpSync(trainedModel, trainedYarn, { recursive: true })
  const ycfg = JSON.parse(readFileSync(join(trainedYarn, "config.json"), "utf8"))
  // The published model is a Llama folder: transformers' YaRN goes in rope_parameters.
  ycfg.rope_parameters = { ...ycfg.rope_parameters, rope_type: "yarn", factor: 4, original_max_position_embeddings: 8, attention_factor: 1.25 }
  ycfg.rope_scaling = null
  writeFileSync(join(trainedYarn, "config.json"), JSON.stringify(ycfg))
  const story = storyPromptIds()
  for (const [key, dir, types] of [["trained", trainedModel, ["f32", "f16", "q8_0"]], ["trained_yarn", trainedYarn, ["f32"]]] as const) {
    for (const type of types) {
      const file = gguf(key, type)
      const r = exportOne(dir, file, type)
      exports.set(`${key}-${type}`, r)
      if (r.code !== 0) throw new Error(`export ${key} ${type} failed: ${r.stderr}`)
      jobIndex.set(`${key}-${type}`, jobs.length)
      jobs.push({ gguf: file, ids: story, greedy: GREEDY })
    }
  }

  const req = { jobs, tokenize: [{ gguf: gguf("dense", "f32"), tokenizer_json: join(tokDir, "tokenizer.json"), texts: TEXTS }] }
  const p = Bun.spawnSync(["python3", join(repo, "tests", "interop", "llama_cpp_check.py")], { cwd: repo, stdin: new TextEncoder().encode(JSON.stringify(req)) })
  if (p.exitCode !== 0) throw new Error(`llama.cpp check failed (needs llama-cpp-python: bun scripts/setup.ts --test): ${p.stderr.toString()}`)
  llama = JSON.parse(p.stdout.toString())
}, 600_000)

function storyPromptIds(): number[] {
  const p = Bun.spawnSync(["python3", "-c", "import sys, json; from tokenizers import Tokenizer; t = Tokenizer.from_file(sys.argv[1]); print(json.dumps(t.encode('Once upon a time, there was a little dog named', add_special_tokens=False).ids))", join(tokDir, "tokenizer.json")])
  if (p.exitCode !== 0) throw new Error(p.stderr.toString())
  return JSON.parse(p.stdout.toString())
}

const figures: Record<string, number> = {}

describe("GGUF export: llama.cpp computes what bunmind computes", () => {
  for (const [name, m] of Object.entries(MODELS)) {
    test(`${name} (${m.arch}) f32: logits at every position within 1e-3, same ${GREEDY} greedy ids`, () => {
      const j = llama.jobs[jobIndex.get(`${name}-f32`)!]!
      expect(j.arch).toBe(m.arch)
      expect(j.n_vocab).toBe(6400)
      const ours = bunmind(modelDir(name), promptIds(m.len ?? 12))
      const d = maxAbs(ours.logits, j.logits)
      figures[`${name}-f32`] = d
      expect(d).toBeLessThanOrEqual(1e-3)
      expect(j.greedy).toEqual(ours.greedy)
    })
  }

  test("the checks are sensitive: without the YaRN or RoPE-pairing mapping the logits would be off by far more than 1e-3", () => {
    // Same weights with and without YaRN / with the other RoPE pairing, in bunmind itself: the agreement
    // with llama.cpp depends on the rope.scaling.* keys and on the q/k permutation being right.
    const story = storyPromptIds()
    const a = bunmind(join(out, "models", "trained_yarn"), story).logits
    const b = bunmind(trainedModel, story).logits.map((x) => Array.from(x))
    expect(maxAbs(a, b)).toBeGreaterThan(0.5)
    const half = join(out, "models", "trained-interleaved")
    cpSync(trainedModel, half, { recursive: true })
    const c2 = JSON.parse(readFileSync(join(half, "config.json"), "utf8"))
    // Interleaved pairs are a MiniMind (seed v1) setting: no Llama field holds it.
    c2.model_type = "minimind"
    c2.rope_interleaved = true
    writeFileSync(join(half, "config.json"), JSON.stringify(c2))
    const e = bunmind(half, story).logits.map((x) => Array.from(x))
    expect(maxAbs(bunmind(trainedModel, story).logits, e)).toBeGreaterThan(0.5)
  })

  for (const [name, m] of Object.entries(MODELS)) {
    for (const type of m.types.filter((t) => t !== "f32")) {
      test(`${name} (${m.arch}) ${type}: loads, logits close, top-1 agrees where bunmind's margin is clear`, () => {
        const j = llama.jobs[jobIndex.get(`${name}-${type}`)!]!
        expect(j.arch).toBe(m.arch)
        const ours = bunmind(modelDir(name), promptIds(m.len ?? 12))
        const d = maxAbs(ours.logits, j.logits)
        figures[`${name}-${type}`] = d
        const bound = type === "f16" ? 0.02 : 0.05
        expect(d).toBeLessThanOrEqual(bound)
        // Top-1 must agree wherever bunmind's top-1 leads its runner-up by more than twice the bound.
        for (let t = 0; t < ours.logits.length; t++) {
          const x = ours.logits[t]!
          const top = argmax(x)
          const second = Math.max(...Array.from(x).filter((_, v) => v !== top))
          if (x[top]! - second > 2 * bound) expect(argmax(j.logits[t]!)).toBe(top)
        }
      })
    }
  }

  test("a trained model (and with YaRN): f32 logits within 1e-3 and the same greedy story; f16 and q8_0 close, same first greedy ids", () => {
    const ids = storyPromptIds()
    for (const key of ["trained", "trained_yarn"]) {
      const ours = bunmind(key === "trained" ? trainedModel : join(out, "models", key), ids)
      const j = llama.jobs[jobIndex.get(`${key}-f32`)!]!
      const d = maxAbs(ours.logits, j.logits)
      figures[`${key}-f32`] = d
      expect(d).toBeLessThanOrEqual(1e-3)
      expect(j.greedy).toEqual(ours.greedy)
      // Not a degenerate continuation: several distinct tokens.
      expect(new Set(ours.greedy).size).toBeGreaterThanOrEqual(6)
    }
    const ours = bunmind(trainedModel, ids)
    for (const [type, bound] of [["f16", 0.05], ["q8_0", 0.3]] as const) {
      const j = llama.jobs[jobIndex.get(`trained-${type}`)!]!
      const d = maxAbs(ours.logits, j.logits)
      figures[`trained-${type}`] = d
      expect(d).toBeLessThanOrEqual(bound)
      const same = j.greedy.findIndex((id, i) => id !== ours.greedy[i])
      figures[`trained-${type}-greedy-agree`] = same < 0 ? GREEDY : same
      expect(j.greedy.slice(0, 4)).toEqual(ours.greedy.slice(0, 4))
    }
    console.log(`[interop-gguf] max |logit difference| bunmind vs llama.cpp: ${JSON.stringify(figures)}`)
  })
})

describe("GGUF tokenizer: llama.cpp tokenizes as HF tokenizers", () => {
  test("same ids on English, Chinese, digits, whitespace and special tokens; no BOS added by either", () => {
    const r = llama.tokenize[0]!
    for (let i = 0; i < TEXTS.length; i++) {
      expect({ text: TEXTS[i], ids: r.llama[i] }).toEqual({ text: TEXTS[i], ids: r.hf[i] })
      expect({ text: TEXTS[i], ids: r.llama_special[i] }).toEqual({ text: TEXTS[i], ids: r.hf_special[i] })
      expect(r.llama_detok[i]).toBe(r.hf_detok[i])
    }
    expect(r.hf.flat().length).toBeGreaterThan(200)
  })
})

describe("GGUF refusals name the field and write nothing", () => {
  const refuse = (name: string, cfg: Cfg, field: string, tokenizer?: string) => {
    const dir = join(out, "refuse", name)
    const m = initModelSync(cfg, 1)
    m.save(dir)
    m.free()
    const file = join(out, "refuse", `${name}.gguf`)
    const args = tokenizer ? ["--tokenizer", tokenizer] : []
    const r = cli(["export", "gguf", "--model", dir, "--out", file, ...(tokenizer ? [] : ["--tokenizer", tokDir]), ...args], undefined, env)
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain(field)
    expect(existsSync(file)).toBe(false)
    expect(existsSync(`${file}.tmp`)).toBe(false)
    return r.stderr
  }
  test("shared experts", () => {
    refuse("shared", tiny({ use_moe: true, num_experts: 4, num_experts_per_tok: 2, n_shared_experts: 1, qk_norm: true }), "n_shared_experts")
  })
  test("norm_topk_prob false with top-2 routing", () => {
    refuse("nonorm", tiny({ use_moe: true, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: false, qk_norm: true }), "norm_topk_prob")
  })
  test("YaRN betas llama.cpp does not read", () => {
    refuse("beta", tiny({ rope_scaling: { type: "yarn", factor: 4, original_max_position_embeddings: 16, beta_fast: 16 } }), "beta_fast")
  })
  test("a tokenizer with a normalizer", () => {
    const t = join(out, "refuse", "tok-nfc")
    mkdirSync(t, { recursive: true })
    const j = JSON.parse(readFileSync(join(tokDir, "tokenizer.json"), "utf8"))
    j.normalizer = { type: "NFC" }
    writeFileSync(join(t, "tokenizer.json"), JSON.stringify(j))
    copyFileSync(join(tokDir, "tokenizer_config.json"), join(t, "tokenizer_config.json"))
    refuse("nfc", tiny({}), "normalizer", t)
  })
  test("a vocabulary larger than the model's", () => {
    refuse("vocab", { preset: "tiny", vocab_size: 256 }, "vocab_size")
  })
})

describe("Ollama Modelfile", () => {
  test("FROM the file, stop on EOS, and a TEMPLATE that Go renders as bunmind's chat template", () => {
    const file = gguf("dense", "f32")
    const text = readFileSync(join(file, "..", "Modelfile"), "utf8")
    expect(text).toContain("FROM ./dense.gguf\n")
    expect(text).toContain('PARAMETER stop "<|im_end|>"')
    const m = /TEMPLATE """([\s\S]*?)"""/.exec(text)
    expect(m).not.toBeNull()
    const tcfg = loadTokenizerConfig(tokDir)
    const conversations: ChatMessage[][] = [
      [{ role: "user", content: "你好" }],
      [{ role: "system", content: "You are a helpful assistant." }, { role: "user", content: "What is 2+2?" }],
      [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello! How can I help?" }, { role: "user", content: "Tell me a story.\nA short one." }],
      [{ role: "system", content: "Be brief." }, { role: "user", content: "a" }, { role: "assistant", content: "b" }, { role: "user", content: "c" }],
    ]
    const p = Bun.spawnSync(["go", "run", join(repo, "tests", "interop", "ollama_template.go")], {
      cwd: repo,
      stdin: new TextEncoder().encode(JSON.stringify({ template: m![1], conversations })),
    })
    if (p.exitCode !== 0) throw new Error(`go run failed (needs Go: bun scripts/setup.ts --test): ${p.stderr.toString()}`)
    const rendered: string[] = JSON.parse(p.stdout.toString())
    for (let i = 0; i < conversations.length; i++) {
      expect(rendered[i]).toBe(applyChatTemplate(tcfg, conversations[i]!, { addGenerationPrompt: true }))
    }
  }, 180_000)

  test("the summary names the arch, type and tokenizer", () => {
    const r = exports.get("moe-q8_0")!
    expect(r.stdout).toContain("GGUF qwen3moe, q8_0")
    expect(r.stdout).toContain('pre "gpt-2"')
    expect(r.stdout).toContain("Modelfile")
    // What Ollama's own qwen3 engine does differently is said, not hidden.
    expect(r.stdout).toContain("Qwen2's regex")
    expect(exports.get("dense-f32")!.stdout).not.toContain("warning")
  })
})
