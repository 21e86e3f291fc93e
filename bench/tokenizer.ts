/**
 * Tokenizer suite: encode throughput (MB/s) through our FFI, single-document calls and batched
 * (parallel natively), against HF `tokenizers` in Python on the same documents; and the cost of a
 * bun:ffi call (trivial export, and a 1-token encode) measured with tinybench.
 *   bun bench/tokenizer.ts [--quick]
 */
import { readFileSync, writeFileSync, mkdirSync } from "node:fs"
import { join } from "node:path"
import { Bench } from "tinybench"
import { loadNativeSync } from "../src/native/library.ts"
import { openTokenizerSync } from "../src/tokenizer/tokenizer.ts"
import { benchRoot, repoRoot, stats, writeReport, type Row } from "./lib/report.ts"

export async function tokenizerSuite(quick = false): Promise<Row[]> {
  const shared = join(repoRoot, "..", "shared", "data")
  const tokPath = process.env.BUNMIND_BENCH_TOKENIZER ?? join(shared, "minimind", "tokenizer.json")
  // Documents: TinyStories stories and Chinese sayings, ~4 MB (1 MB in quick mode).
  const en = readFileSync(join(shared, "corpora", "tinystories_sample.txt"), "utf8").split("<|endoftext|>")
  const zh = readFileSync(join(shared, "corpora", "fortunes_zh_chinese.txt"), "utf8").replace(/\x1b\[[0-9;]*m/g, "").split(/\n%\n/)
  let docs = [...en, ...zh].map((d) => d.trim()).filter(Boolean)
  if (quick) docs = docs.filter((_, i) => i % 4 === 0)
  const bytes = docs.reduce((a, d) => a + Buffer.byteLength(d), 0)
  const reps = quick ? 2 : 5

  const native = loadNativeSync("cpu")
  const tok = openTokenizerSync(tokPath, native)
  const time = (fn: () => void) => {
    const s: number[] = []
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now()
      fn()
      s.push((performance.now() - t0) / 1000)
    }
    return s
  }
  tok.encodeBatch(docs.slice(0, 100)) // warm up
  const single = time(() => {
    for (const d of docs) tok.encode(d)
  })
  const batch = time(() => {
    for (let i = 0; i < docs.length; i += 1024) tok.encodeBatch(docs.slice(i, i + 1024))
  })

  // Same documents through Python's HF tokenizers, in this run.
  const tmp = join(benchRoot, "reports", "tmp")
  mkdirSync(tmp, { recursive: true })
  writeFileSync(join(tmp, "docs.json"), JSON.stringify(docs))
  const py = Bun.spawnSync(["python3", join(benchRoot, "py", "tokenizer_bench.py"), tokPath, join(tmp, "docs.json"), String(reps)])
  const base = py.exitCode === 0 ? JSON.parse(py.stdout.toString()) : undefined
  if (!base) console.error(`[bench] python baseline unavailable: ${py.stderr.toString().trim().split("\n").pop()}`)

  const mbps = (s: number[]) => stats(s.map((t) => bytes / 2 ** 20 / t))
  const sSingle = mbps(single)
  const sBatch = mbps(batch)
  const rows: Row[] = [
    { suite: "tokenizer", name: "encode, one call per document", backend: "bunmind (bun:ffi)", unit: "MB/s", value: sSingle.median, spread: sSingle.spread },
    { suite: "tokenizer", name: "encode, batches of 1024", backend: "bunmind (bun:ffi)", unit: "MB/s", value: sBatch.median, spread: sBatch.spread },
  ]
  if (base) {
    const pSingle = mbps(base.single_s)
    const pBatch = mbps(base.batch_s)
    rows[0]!.baseline = `HF tokenizers ${base.version} (Python)`
    rows[0]!.ratio = sSingle.median / pSingle.median
    rows[1]!.baseline = rows[0]!.baseline
    rows[1]!.ratio = sBatch.median / pBatch.median
    rows.push(
      { suite: "tokenizer", name: "encode, one call per document", backend: `HF tokenizers ${base.version} (Python)`, unit: "MB/s", value: pSingle.median, spread: pSingle.spread },
      { suite: "tokenizer", name: "encode, batches of 1024", backend: `HF tokenizers ${base.version} (Python)`, unit: "MB/s", value: pBatch.median, spread: pBatch.spread },
    )
  }

  // FFI call overhead.
  const b = new Bench({ time: quick ? 200 : 1000 })
  b.add("bm_abi_version (trivial export)", () => {
    native.sym.bm_abi_version()
  })
  b.add("encode('a') through the wrapper", () => {
    tok.encode("a")
  })
  await b.run()
  for (const task of b.tasks) {
    const r = task.result as { latency?: { mean: number; rme?: number }; mean?: number; rme?: number } | undefined
    const meanMs = r?.latency?.mean ?? r?.mean ?? NaN
    rows.push({ suite: "ffi", name: task.name, backend: "bun:ffi", unit: "ns/call", value: meanMs * 1e6, spread: ((r?.latency?.rme ?? r?.rme ?? 0) / 100) * 2 })
  }
  tok.free()
  return rows
}

if (import.meta.main) {
  const rows = await tokenizerSuite(process.argv.includes("--quick"))
  const { json, md } = writeReport("tokenizer", rows)
  console.log(readFileSync(md, "utf8"))
  console.error(`wrote ${json} and ${md}`)
}
