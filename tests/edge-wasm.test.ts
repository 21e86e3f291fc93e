/**
 * The wasm core (dist/wasm/pkg) against the native engine on the same checkpoint, run under Bun:
 * tokenizer ids on the parity strings, f32 logits to 1e-4, greedy and seeded sampled generations id for id, a
 * continued conversation on the KV cache, the numpy reference fixtures, int8/bf16 weights, bad input, and
 * `bunmind export edge` with its site's runtime used as an ES module.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import { loadWasm, type WasmChatModel, type WasmModule } from "../src/edge/runtime.ts"
import { repo } from "./helpers/cli.ts"
import { byteTokenizerJson, edgeCli, edgeTools, ensureWasm, minimindTokenizer, outDir, parityFile, pkgDir, randomModel } from "./helpers/edge.ts"

interface Reference {
  sampled_options: Record<string, unknown>
  parity_ids: number[][]
  prompts: { text: string; ids: number[]; logits: number[]; greedy: number[]; greedy_penalized: number[]; sampled: number[] }[]
  conversation: { turn1: number[]; turn1_reply: number[]; turn2: number[]; turn2_greedy: number[] }
}

const parity = JSON.parse(readFileSync(parityFile, "utf8")) as { cases: { name: string; text: string; ids: number[]; decoded: string }[] }
let wasm: WasmModule
let ref: Reference
let modelDir: string
const read = (f: string) => new Uint8Array(readFileSync(f))
let tok: Uint8Array, cfg: Uint8Array, weights: Uint8Array

const greedy = (n: number) => JSON.stringify({ temperature: 0, max_new_tokens: n, stop_token_ids: [] })
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length)
  let d = 0
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!))
  return d
}
const load = (w = weights, c = cfg, t = tok): WasmChatModel => new wasm.ChatModel(t, c, w)

beforeAll(async () => {
  ensureWasm()
  modelDir = randomModel("tiny")
  const refFile = join(outDir, "tiny-reference.json")
  edgeTools(["reference", modelDir, join(minimindTokenizer, "tokenizer.json"), parityFile, refFile])
  ref = JSON.parse(readFileSync(refFile, "utf8"))
  wasm = await loadWasm(pathToFileURL(pkgDir + "/"))
  tok = read(join(modelDir, "tokenizer.json"))
  cfg = read(join(modelDir, "config.json"))
  weights = read(join(modelDir, "model.safetensors"))
}, 3_600_000)

describe("wasm vs native (same checkpoint)", () => {
  test("the SIMD build reports SIMD", () => {
    expect(wasm.simdEnabled()).toBe(true)
  })

  test("tokenizer ids equal the native ones (and HF's) on every parity string", () => {
    const m = load()
    const bad: string[] = []
    parity.cases.forEach((c, i) => {
      const ids = [...m.encode(c.text, false)]
      if (JSON.stringify(ids) !== JSON.stringify(ref.parity_ids[i])) bad.push(`${c.name}: wasm ${JSON.stringify(ids)} native ${JSON.stringify(ref.parity_ids[i])}`)
      if (JSON.stringify(ids) !== JSON.stringify(c.ids)) bad.push(`${c.name}: wasm differs from HF tokenizers`)
      if (m.decode(Uint32Array.from(ids), false) !== c.decoded) bad.push(`${c.name}: decode differs`)
    })
    expect(parity.cases.length).toBeGreaterThan(100)
    expect(bad).toEqual([])
    m.free()
  })

  test("f32 logits of every position match native to 1e-4", () => {
    const m = load()
    for (const p of ref.prompts) {
      const logits = m.logits(Uint32Array.from(p.ids))
      expect(logits.length).toBe(p.ids.length * 6400)
      const d = maxDiff(logits, p.logits)
      expect(d).toBeLessThanOrEqual(1e-4)
    }
    m.free()
  })

  test("greedy and seeded sampled generations are identical", () => {
    const m = load()
    for (const p of ref.prompts) {
      m.reset()
      m.begin(Uint32Array.from(p.ids), greedy(32))
      expect([...m.finish()]).toEqual(p.greedy)
      expect(m.finishReason()).toBe("length")
      m.reset()
      m.begin(Uint32Array.from(p.ids), JSON.stringify({ temperature: 0, repetition_penalty: 4.0, max_new_tokens: 32, stop_token_ids: [] }))
      expect([...m.finish()]).toEqual(p.greedy_penalized)
      expect(new Set(p.greedy_penalized).size).toBeGreaterThan(16) // a varied path, not one repeated token
      m.reset()
      m.begin(Uint32Array.from(p.ids), JSON.stringify(ref.sampled_options))
      expect([...m.finish()]).toEqual(p.sampled)
    }
    // The sampled runs really sample (else this test would only repeat the greedy one).
    expect(ref.prompts.some((p) => JSON.stringify(p.sampled.slice(0, p.greedy.length)) !== JSON.stringify(p.greedy.slice(0, p.sampled.length)))).toBe(true)
    m.free()
  })

  test("a second turn reuses the KV cache and equals native decoding from scratch", () => {
    const m = load()
    const c = ref.conversation
    expect(m.begin(Uint32Array.from(c.turn1), greedy(8))).toBe(0)
    expect([...m.finish()]).toEqual(c.turn1_reply)
    const reused = m.begin(Uint32Array.from(c.turn2), greedy(16))
    expect(reused).toBe(c.turn1.length + c.turn1_reply.length - 1) // all but the last sampled token was fed
    expect([...m.finish()]).toEqual(c.turn2_greedy)
    // A conversation that diverges inside the cached part: the cache is cut back, the result is unchanged.
    const edited = [...c.turn2.slice(0, c.turn1.length - 3), 300, 301, 302]
    const r = m.begin(Uint32Array.from(edited), greedy(6))
    expect(r).toBe(c.turn1.length - 3)
    const viaCache = [...m.finish()]
    m.reset()
    expect(m.cachedTokens()).toBe(0)
    expect(m.begin(Uint32Array.from(edited), greedy(6))).toBe(0)
    expect([...m.finish()]).toEqual(viaCache)
    m.free()
  })
})

describe("wasm vs the numpy reference fixtures", () => {
  const fixtures = resolve(repo, "tests/fixtures/model")
  const names = readdirSync(fixtures).filter((n) => existsSync(join(fixtures, n, "expected.json")))
  const byteTok = new TextEncoder().encode(byteTokenizerJson())
  test.each(names)("%s: logits of every position to 1e-4", (name) => {
    const exp = JSON.parse(readFileSync(join(fixtures, name, "expected.json"), "utf8")) as { sequences: { ids: number[]; logits_all: number[][] }[] }
    const m = load(read(join(fixtures, name, "model.safetensors")), read(join(fixtures, name, "config.json")), byteTok)
    for (const s of exp.sequences) expect(maxDiff(m.logits(Uint32Array.from(s.ids)), s.logits_all.flat())).toBeLessThanOrEqual(1e-4)
    m.free()
  })
})

describe("smaller weights", () => {
  test.each([
    ["int8", 0.3],
    ["bf16", 0.52],
  ] as const)("%s: smaller file, loads, logits close to f32", (enc, ratio) => {
    const q = wasm.quantize(weights, enc)
    expect(q.length / weights.length).toBeLessThan(ratio)
    const m = load(q)
    expect((m.info() as { weights_encoding: string }).weights_encoding).toBe(enc)
    const f = load()
    const ids = Uint32Array.from(ref.prompts[0]!.ids)
    const a = f.logits(ids)
    const b = m.logits(ids)
    const scale = a.reduce((s, x) => Math.max(s, Math.abs(x)), 0)
    expect(maxDiff(a, b) / scale).toBeLessThan(0.05)
    m.free()
    f.free()
  })
})

describe("bad input: clear errors, and the module keeps working", () => {
  const err = (f: () => unknown): string => {
    try {
      f()
    } catch (e) {
      expect(e).toBeInstanceOf(Error)
      expect(e).not.toBeInstanceOf(WebAssembly.RuntimeError)
      return (e as Error).message
    }
    throw new Error("expected an error")
  }

  test("truncated or corrupt safetensors", () => {
    expect(err(() => load(weights.slice(0, weights.length - 1000)))).toMatch(new RegExp(`truncated: tensor data needs ${weights.length} bytes but the file has ${weights.length - 1000}`))
    expect(err(() => load(weights.slice(0, 40)))).toMatch(/truncated: the header needs \d+ bytes but the file has 40/)
    expect(err(() => load(weights.slice(0, 3)))).toMatch(/too short for a safetensors file/)
    expect(err(() => load(new TextEncoder().encode("<!doctype html><html>404</html>")))).toMatch(/not a safetensors file/)
    expect(err(() => wasm.quantize(weights.slice(0, 5000), "int8"))).toMatch(/truncated/)
  })

  test("a config that does not match the weights", () => {
    const c = JSON.parse(new TextDecoder().decode(cfg))
    const with_ = (patch: Record<string, unknown>) => new TextEncoder().encode(JSON.stringify({ ...c, ...patch }))
    expect(err(() => load(weights, with_({ hidden_size: 128 })))).toMatch(/model\.safetensors does not match config\.json: tensor `model\.embed_tokens\.weight`: shape mismatch: expected \[6400, 128\]/)
    expect(err(() => load(weights, with_({ num_hidden_layers: 1 })))).toMatch(/config says 1 layers but the checkpoint has `model\.layers\.1\./)
    expect(err(() => load(weights, with_({ num_attention_heads: 3 })))).toMatch(/config\.json: config field `/)
    expect(err(() => load(weights, new TextEncoder().encode("{ not json")))).toMatch(/^config\.json: /)
  })

  test("a tokenizer of another vocab size, or no tokenizer", () => {
    expect(err(() => load(weights, cfg, new TextEncoder().encode(byteTokenizerJson())))).toMatch(/tokenizer\.json has 256 tokens but config\.json says vocab_size 6400/)
    expect(err(() => load(weights, cfg, new TextEncoder().encode("{}")))).toMatch(/^tokenizer\.json: /)
  })

  test("bad generation options and prompts", () => {
    const m = load()
    expect(err(() => m.begin(Uint32Array.from([1, 2]), JSON.stringify({ temprature: 1 })))).toMatch(/unknown option "temprature"/)
    expect(err(() => m.begin(Uint32Array.from([1, 2]), JSON.stringify({ top_p: 2 })))).toMatch(/top_p 2 must be in \(0, 1\]/)
    expect(err(() => m.begin(Uint32Array.from([]), greedy(1)))).toMatch(/empty/)
    expect(err(() => m.begin(Uint32Array.from([9999]), greedy(1)))).toMatch(/out of range for vocab_size 6400/)
    expect(err(() => m.step())).toMatch(/no turn in progress/)
    // Still alive: generation works after all of the above.
    m.begin(Uint32Array.from(ref.prompts[0]!.ids), greedy(4))
    expect([...m.finish()]).toEqual(ref.prompts[0]!.greedy.slice(0, 4))
    m.free()
  })
})

describe("bunmind export edge", () => {
  const site = join(outDir, "site-int8")

  test("writes a self-contained site whose runtime chats as an ES module under Bun", async () => {
    const r = edgeCli(["export", "edge", "--model", modelDir, "--out", site, "--quantize", "int8", "--name", "tiny test"])
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/wasm +\d+ KiB \(gzip \d+ KiB\)/)
    expect(r.stdout).toMatch(/int8: 2\d% of/)
    for (const f of ["index.html", "app.js", "worker.js", "bunmind-chat.js", "manifest.json", "pkg/bunmind_wasm_bg.wasm", "pkg/bunmind_wasm.js", "pkg/bunmind_wasm.d.ts", "pkg/package.json", "pkg-nosimd/bunmind_wasm_bg.wasm", "model/model.safetensors", "model/tokenizer_config.json"]) {
      expect(existsSync(join(site, f))).toBe(true)
    }
    const manifest = JSON.parse(readFileSync(join(site, "manifest.json"), "utf8"))
    expect(manifest.quantization).toBe("int8")
    expect(manifest.files.weights.bytes).toBe(readFileSync(join(site, "model/model.safetensors")).length)

    // The exported runtime, imported from the site as any ES-module runtime would.
    const mod = await import(pathToFileURL(join(site, "bunmind-chat.js")).href)
    const chat = await mod.EdgeChat.fromSite(pathToFileURL(site + "/"))
    expect(chat.info.weights_encoding).toBe("int8")
    expect(chat.sources.weights).toBe("network")
    const steps: { id: number; text: string }[] = []
    const it = chat.stream([{ role: "user", content: "你好" }], { max_new_tokens: 12, temperature: 0 })
    let result
    for (;;) {
      const n = await it.next()
      if (n.done) {
        result = n.value
        break
      }
      steps.push(n.value)
    }
    expect(steps.length).toBe(result.ids.length)
    expect(result.ids.length).toBeGreaterThan(0)
    expect(steps.map((s) => s.text).join("")).toBe(result.text)
    // Second turn: the conversation's cached positions are reused.
    const it2 = chat.stream(
      [
        { role: "user", content: "你好" },
        { role: "assistant", content: result.text },
        { role: "user", content: "再见" },
      ],
      { max_new_tokens: 4, temperature: 0 },
    )
    let r2
    while (!(r2 = await it2.next()).done);
    expect(r2.value.reused).toBeGreaterThan(10)
    chat.free()

    // A bundled edge worker: hand over an imported glue module and the wasm bytes (the no-SIMD build here, so
    // that this instance is initialised fresh), with the model files as bytes.
    const glue = await import(pathToFileURL(join(site, "pkg-nosimd/bunmind_wasm.js")).href)
    const w = await mod.initWasm(glue, readFileSync(join(site, "pkg-nosimd/bunmind_wasm_bg.wasm")))
    expect(w.simdEnabled()).toBe(false)
    const m = (f: string) => new Uint8Array(readFileSync(join(site, "model", f)))
    const direct = await mod.EdgeChat.load({ tokenizer: m("tokenizer.json"), config: m("config.json"), weights: m("model.safetensors"), tokenizerConfig: m("tokenizer_config.json") }, { wasm: w })
    const ids: number[] = []
    for (const s of direct.streamSync([{ role: "user", content: "你好" }], { max_new_tokens: 12, temperature: 0 })) ids.push(s.id)
    expect(ids).toEqual(result.ids) // same tokens as the SIMD build
    direct.free()
  }, 300_000)

  test("refuses what would not work in the browser, with the reason", () => {
    const other = join(outDir, "byte-tokenizer")
    mkdirSync(other, { recursive: true })
    writeFileSync(join(other, "tokenizer.json"), byteTokenizerJson())
    writeFileSync(join(other, "tokenizer_config.json"), readFileSync(join(minimindTokenizer, "tokenizer_config.json")))
    let r = edgeCli(["export", "edge", "--model", modelDir, "--out", join(outDir, "bad-site"), "--tokenizer", other])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/would not load in the browser: tokenizer\.json has 256 tokens but config\.json says vocab_size 6400/)
    expect(existsSync(join(outDir, "bad-site"))).toBe(false)
    r = edgeCli(["export", "edge", "--model", join(outDir, "nope"), "--out", join(outDir, "bad-site")])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/nope: not a directory/)
    r = edgeCli(["export", "edge", "--model", modelDir, "--out", join(outDir, "bad-site"), "--quantize", "int4"])
    expect(r.code).not.toBe(0)
    expect(r.stdout + r.stderr).toMatch(/int4/)
    // Never clobbers a directory that is not an earlier export.
    r = edgeCli(["export", "edge", "--model", modelDir, "--out", resolve(repo, "tests/fixtures")])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/is not an exported site/)
  }, 300_000)
})
