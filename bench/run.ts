#!/usr/bin/env bun
/**
 * Runs benchmark suites and writes one combined report in bench/reports/:
 * `bench[-quick].json` (rows + machine, versions, git commit), `bench[-quick].md` (key figures and
 * one table per suite) and `bench[-quick]-<suite>.svg` (a bar chart per suite).
 *   bun run bench [suite...] [--quick] [--compare <old.json>]
 * Suites: kernels (every engine op on every backend present, checked against a TS reference),
 * tokenizer (encode MB/s vs HF tokenizers, FFI call cost), model (training / prefill / decode
 * tokens/s vs PyTorch eager on CPU), serve and edge (when those suites exist in this checkout).
 * `--compare <old.json>` compares this run's report with an older one (bench/lib/compare.ts) and
 * writes reports/compare.md.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { compareFiles } from "./lib/compare.ts"
import { benchRoot, machine, repoRoot, writeReport, type Row } from "./lib/report.ts"
import { suiteSvg } from "./lib/svg.ts"

type R = Row & { check?: string; max_err?: number; tol?: number }
type Suite = (quick: boolean) => Promise<R[]>

/** Suites other engineers add: registered only when their file is in this checkout. */
const optional = (file: string, exportName: string) =>
  existsSync(join(benchRoot, file))
    ? async () => {
        const mod = (await import(join(benchRoot, file))) as Record<string, unknown>
        const f = mod[exportName]
        if (typeof f !== "function") throw new Error(`bench/${file} does not export ${exportName}`)
        return f as Suite
      }
    : undefined

const suites: Record<string, () => Promise<Suite>> = {
  kernels: async () => (await import("./kernels.ts")).kernelSuite,
  tokenizer: async () => (await import("./tokenizer.ts")).tokenizerSuite,
  model: async () => (await import("./model.ts")).modelSuite,
  pipeline: async () => (await import("./pipeline.ts")).pipelineSuite,
}
for (const [name, file, fn] of [
  ["serve", "serve.ts", "serveSuite"],
  ["edge", "edge.ts", "edgeSuite"],
] as const) {
  const s = optional(file, fn)
  if (s) suites[name] = s
}

const args = process.argv.slice(2)
const quick = args.includes("--quick")
const ci = args.indexOf("--compare")
const comparePath = ci >= 0 ? args[ci + 1] : undefined
if (ci >= 0 && (!comparePath || !existsSync(comparePath))) {
  console.error(`--compare needs an existing report JSON, got ${comparePath ?? "nothing"}`)
  process.exit(2)
}
const chosen = args.filter((a, i) => !a.startsWith("--") && !(ci >= 0 && i === ci + 1))
const names = chosen.length ? chosen : Object.keys(suites)
const unknown = names.filter((n) => !(n in suites))
if (unknown.length) {
  console.error(`unknown suite(s): ${unknown.join(", ")}; available: ${Object.keys(suites).join(", ")}`)
  process.exit(2)
}

const t0 = performance.now()
const rows: R[] = []
const seconds: Record<string, number> = {}
const failed: Record<string, string> = {}
for (const name of names) {
  console.error(`[bench] suite ${name}${quick ? " (quick)" : ""}`)
  const s0 = performance.now()
  try {
    const suite = await suites[name]!()
    rows.push(...(await suite(quick)))
  } catch (e) {
    // One broken suite must not lose the others' figures: record it and go on.
    failed[name] = e instanceof Error ? e.message : String(e)
    console.error(`[bench] suite ${name} FAILED: ${failed[name]}`)
  }
  seconds[name] = +((performance.now() - s0) / 1000).toFixed(1)
}

// ---------------------------------------------------------------------------------------------
// Versions, backends, key figures.

function cmdOut(cmd: string[]): string | undefined {
  try {
    const p = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" })
    return p.exitCode === 0 ? p.stdout.toString().trim() : undefined
  } catch {
    return undefined
  }
}

function versions(): Record<string, string | null> {
  const lock = existsSync(join(repoRoot, "core-rs", "Cargo.lock")) ? readFileSync(join(repoRoot, "core-rs", "Cargo.lock"), "utf8") : ""
  const crate = (n: string) => lock.match(new RegExp(`name = "${n}"\\nversion = "([^"]+)"`))?.[1] ?? null
  const pkg = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { version: string }
  const tb = JSON.parse(readFileSync(join(repoRoot, "node_modules", "tinybench", "package.json"), "utf8")) as { version: string }
  const py = cmdOut([
    "python3",
    "-c",
    "import json,sys\nfrom importlib.metadata import version\nv={'python':sys.version.split()[0]}\nfor m in ('torch','tokenizers'):\n  try: v[m]=version(m)\n  except Exception: v[m]=None\nprint(json.dumps(v))",
  ])
  let native: string | null = null
  try {
    const { loadNativeSync } = require("../src/native/library.ts") as typeof import("../src/native/library.ts")
    const info = loadNativeSync("cpu").buildInfo()
    native = `${info.version} (ABI ${info.abi}${info.cuda ? ", CUDA" : ""})`
  } catch {
    native = null
  }
  return {
    bunmind: pkg.version,
    native_library: native,
    bun: Bun.version,
    tinybench: tb.version,
    candle: crate("candle-core"),
    tokenizers_rs: crate("tokenizers"),
    rustc: cmdOut(["rustc", "--version"]) ?? null,
    ...((py ? JSON.parse(py) : { python: null, torch: null, tokenizers: null }) as Record<string, string | null>),
    gpu: cmdOut(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]) ?? null,
  }
}

const fmt = (v: number) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3))
const pm = (r: R) => (r.spread !== undefined ? ` (±${(r.spread * 50).toFixed(1)}%)` : "")

function keyFigures(rs: R[], absent: Record<string, string>): { lines: string[]; json: Record<string, unknown> } {
  const find = (suite: string, name: RegExp, backend: RegExp) => rs.find((r) => r.suite === suite && name.test(r.name) && backend.test(r.backend))
  const lines: string[] = []
  const json: Record<string, unknown> = {}
  const vs = (r: R | undefined, label: string, key: string) => {
    if (!r) return lines.push(`- ${label}: not measured in this run`)
    json[key] = { value: r.value, unit: r.unit, spread: r.spread, baseline: r.baseline, ratio: r.ratio }
    lines.push(`- ${label}: **${fmt(r.value)} ${r.unit}**${pm(r)}` + (r.ratio !== undefined ? ` — **${r.ratio.toFixed(2)}×** ${r.baseline}` : " — baseline not installed"))
  }
  vs(find("model", /train step/, /^bunmind/), "CPU training tokens/s (minimind2-small, vs PyTorch eager)", "train_tokens_per_s")
  vs(find("model", /^.*decode, batch 1/, /^bunmind/), "CPU decode tokens/s (batch 1, KV cache, vs PyTorch eager)", "decode_tokens_per_s")
  vs(find("tokenizer", /batches of 1024/, /^bunmind/), "tokenizer encode MB/s, batched (vs HF tokenizers)", "tokenizer_batch_mb_per_s")
  vs(find("tokenizer", /one call per document/, /^bunmind/), "tokenizer encode MB/s, one call per document (vs HF tokenizers)", "tokenizer_single_mb_per_s")
  const abi = find("ffi", /bm_abi_version/, /./)
  const kc = find("ffi", /kernel call overhead/, /./)
  if (abi || kc) {
    json.ffi_overhead_ns = { trivial_call: abi?.value, kernel_call_minus_op: kc?.value }
    lines.push(
      `- FFI overhead per call: ${abi ? `**${fmt(abi.value)} ns** for a trivial export (bm_abi_version)${pm(abi)}` : ""}${abi && kc ? "; " : ""}${kc ? `**${fmt(kc.value)} ns** per kernel call beyond the engine op (bun:ffi + tensors in/out)${pm(kc)}` : ""}`,
    )
  } else lines.push("- FFI overhead per call: not measured in this run")
  const kr = rs.filter((r) => r.suite === "kernels")
  if (kr.length) {
    const wrong = kr.filter((r) => r.check === "WRONG")
    const checked = new Set(kr.filter((r) => (r.check === "ok" || r.check === "WRONG") && !r.backend.includes("engine op only")).map((r) => `${r.name}|${r.backend}`))
    lines.push(`- kernel correctness vs the TypeScript reference: ${wrong.length ? `**${wrong.length} WRONG** (${wrong.map((r) => `${r.name} on ${r.backend}`).join("; ")})` : "all agree"} (${checked.size} kernel × backend checks)`)
  }
  const cuda = rs.filter((r) => /CUDA/.test(r.backend))
  if (cuda.length) {
    const mfu = cuda.filter((r) => /MFU/.test(r.note ?? "")).map((r) => `${r.name}: ${r.note!.match(/MFU [\d.]+%/)![0]}`)
    lines.push(`- GPU: ${cuda.length} CUDA rows; ${mfu.length ? mfu.join("; ") : "no MFU (unknown GPU peak)"}`)
  } else lines.push(`- GPU: none — CUDA rows skipped (${absent["candle CUDA (bun:ffi)"] ?? "CUDA backend not present"})`)
  return { lines, json }
}

function table(rs: R[]): string {
  const lines = [
    "| benchmark | backend | value | spread | baseline | ratio | check / note |",
    "|---|---|---:|---:|---|---:|---|",
    ...rs.map((r) => {
      const check = r.check === "WRONG" ? "**WRONG**" : r.check ?? ""
      const note = [check, r.note ?? ""].filter(Boolean).join(" — ").replace(/\|/g, "\\|")
      return `| ${r.name} | ${r.backend} | ${fmt(r.value)} ${r.unit} | ${r.spread !== undefined ? `±${(r.spread * 50).toFixed(1)}%` : ""} | ${r.baseline ?? ""} | ${r.ratio !== undefined ? `${r.ratio.toFixed(2)}×` : ""} | ${note} |`
    }),
  ]
  return lines.join("\n") + "\n"
}

let absent: Record<string, string> = {}
if (names.includes("kernels") && !failed.kernels) absent = { ...(await import("./kernels.ts")).absentBackends }
const base = quick ? "bench-quick" : "bench"
const ver = versions()
const key = keyFigures(rows, absent)
const totalS = +((performance.now() - t0) / 1000).toFixed(1)
const { json, md } = writeReport(base, rows, {
  quick,
  suites: names,
  versions: ver,
  absent_backends: absent,
  failed_suites: failed,
  seconds: { ...seconds, total: totalS },
  key_figures: key.json,
})

// The combined markdown (replaces writeReport's single table) and one SVG per suite.
const m = machine()
const svgs: string[] = []
const parts = [
  `# bunmind bench${quick ? " (quick)" : ""}`,
  "",
  `${m.cpu}, ${m.cores} cores, ${m.memory_gib} GiB, ${m.platform}; commit ${m.commit}; ${m.date}; ${totalS} s.`,
  `Versions: ${Object.entries(ver).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ")}.`,
  "",
  "Every value is a median over samples; ± is half the spread ((max − min) / median). Ratios are to the row's baseline, measured in the same run, and > 1× means better than the baseline.",
  "",
  "## Key figures (CPU)",
  "",
  ...key.lines,
  "",
]
if (Object.keys(absent).length) parts.push("Backends not measured:", "", ...Object.entries(absent).map(([b, why]) => `- ${b}: ${why}`), "")
if (Object.keys(failed).length) parts.push("Suites that failed:", "", ...Object.entries(failed).map(([s, why]) => `- ${s}: ${why}`), "")
const suiteNames = [...new Set(rows.map((r) => r.suite))]
for (const s of suiteNames) {
  const rs = rows.filter((r) => r.suite === s)
  const svg = join(benchRoot, "reports", `${base}-${s}.svg`)
  writeFileSync(svg, suiteSvg(s, rs, `${m.cpu}, commit ${m.commit}${quick ? ", quick" : ""}`))
  svgs.push(svg)
  parts.push(`## ${s}`, "", `![${s}](${base}-${s}.svg)`, "", table(rs))
}
writeFileSync(md, parts.join("\n"))
console.log(readFileSync(md, "utf8"))
console.error(`wrote ${json}, ${md} and ${svgs.length} SVG chart(s) in ${totalS} s`)
if (comparePath) compareFiles(comparePath, json)
if (Object.keys(failed).length) process.exit(1)
