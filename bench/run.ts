#!/usr/bin/env bun
/**
 * Runs benchmark suites and writes one combined report (JSON + markdown) in bench/reports/.
 *   bun run bench [suite...] [--quick]
 * Suites: tokenizer (encode MB/s vs HF tokenizers, FFI call cost), model (training / forward /
 * decode tokens/s vs PyTorch eager on CPU, when the model engine is present), edge (wasm decode tokens/s in
 * Chromium with and without SIMD vs native single-threaded, model load times, wasm/page sizes).
 */
import { readFileSync } from "node:fs"
import { writeReport, type Row } from "./lib/report.ts"

type Suite = (quick: boolean) => Promise<Row[]>
const suites: Record<string, () => Promise<Suite>> = {
  tokenizer: async () => (await import("./tokenizer.ts")).tokenizerSuite,
  model: async () => (await import("./model.ts")).modelSuite,
  edge: async () => (await import("./edge.ts")).edgeSuite,
}

const args = process.argv.slice(2)
const quick = args.includes("--quick")
const chosen = args.filter((a) => !a.startsWith("--"))
const names = chosen.length ? chosen : Object.keys(suites)
const unknown = names.filter((n) => !(n in suites))
if (unknown.length) {
  console.error(`unknown suite(s): ${unknown.join(", ")}; available: ${Object.keys(suites).join(", ")}`)
  process.exit(2)
}
const rows: Row[] = []
for (const name of names) {
  console.error(`[bench] suite ${name}${quick ? " (quick)" : ""}`)
  const suite = await suites[name]!()
  rows.push(...(await suite(quick)))
}
const { json, md } = writeReport(quick ? "bench-quick" : "bench", rows, { quick, suites: names })
console.log(readFileSync(md, "utf8"))
console.error(`wrote ${json} and ${md}`)
