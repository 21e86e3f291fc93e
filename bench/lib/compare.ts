/**
 * Compare two bench reports row by row (matched on suite + benchmark + backend).
 *
 * Rule: change = (new − old) / old, signed so that > 0 is better (higher tokens/s, MB/s,
 * GFLOP/s; lower ms, ns, MiB, error). A change is called real — "regression" or "improvement" —
 * only when |change| > max(spread_old, spread_new), each spread being that report's measured noise
 * for the row ((max − min) / median over its samples). Rows without a spread on either side have
 * no noise estimate and are never flagged. A row whose correctness check flips from ok to WRONG is
 * always a regression.
 *   bun bench/lib/compare.ts <old.json> [<new.json>]   (new defaults to reports/bench.json)
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { benchRoot, type Row } from "./report.ts"

type R = Row & { check?: string }
export interface Report {
  machine?: Record<string, unknown>
  rows: R[]
}

export type Verdict = "regression" | "improvement" | "within noise" | "no noise estimate" | "new" | "gone"

export interface Change {
  suite: string
  name: string
  backend: string
  unit: string
  old?: number
  new?: number
  /** Signed so that > 0 is better. */
  change?: number
  threshold?: number
  verdict: Verdict
}

// Times and sizes (also per unit: ms/token), but not rates (MB/s, tokens/s).
const LOWER_IS_BETTER = /^(ms|s|ns|µs|us|MiB|GiB|MB|max rel\. error)(\/(?!s$)|$)/

export function lowerIsBetter(unit: string): boolean {
  return LOWER_IS_BETTER.test(unit)
}

const key = (r: R) => `${r.suite}\u0000${r.name}\u0000${r.backend}`

export function compareReports(oldR: Report, newR: Report): Change[] {
  const old = new Map(oldR.rows.map((r) => [key(r), r]))
  const seen = new Set<string>()
  const out: Change[] = []
  for (const n of newR.rows) {
    const k = key(n)
    seen.add(k)
    const o = old.get(k)
    const base = { suite: n.suite, name: n.name, backend: n.backend, unit: n.unit, new: n.value }
    if (!o) {
      out.push({ ...base, verdict: "new" })
      continue
    }
    if (o.check !== "WRONG" && n.check === "WRONG") {
      out.push({ ...base, old: o.value, verdict: "regression" })
      continue
    }
    if (o.unit !== n.unit || !(o.value > 0)) {
      out.push({ ...base, old: o.value, verdict: "no noise estimate" })
      continue
    }
    const raw = (n.value - o.value) / o.value
    const change = lowerIsBetter(n.unit) ? -raw : raw
    if (o.spread === undefined || n.spread === undefined) {
      out.push({ ...base, old: o.value, change, verdict: "no noise estimate" })
      continue
    }
    const threshold = Math.max(o.spread, n.spread)
    const verdict: Verdict = Math.abs(change) > threshold ? (change < 0 ? "regression" : "improvement") : "within noise"
    out.push({ ...base, old: o.value, change, threshold, verdict })
  }
  for (const o of oldR.rows) if (!seen.has(key(o))) out.push({ suite: o.suite, name: o.name, backend: o.backend, unit: o.unit, old: o.value, verdict: "gone" })
  return out
}

const fmt = (v: number | undefined) => (v === undefined ? "" : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3))
const pct = (v: number | undefined) => (v === undefined ? "" : `${v >= 0 ? "+" : ""}${(v * 100).toFixed(1)}%`)

export function compareMarkdown(changes: Change[], oldName: string, newName: string): string {
  const count = (v: Verdict) => changes.filter((c) => c.verdict === v).length
  const lines = [
    `## Comparison: ${oldName} → ${newName}`,
    "",
    "Change is signed so that + is better. A change is real only when |change| > max(spread old, spread new) " +
      "(each report's measured noise for that row); rows without a spread are never flagged.",
    "",
    `**${count("regression")} regression(s), ${count("improvement")} improvement(s)**, ${count("within noise")} within noise, ` +
      `${count("no noise estimate")} without a noise estimate, ${count("new")} new, ${count("gone")} gone.`,
    "",
    "| suite | benchmark | backend | old | new | change | noise threshold | verdict |",
    "|---|---|---|---:|---:|---:|---:|---|",
    ...changes.map((c) => {
      const v = c.verdict === "regression" ? "**REGRESSION**" : c.verdict === "improvement" ? "**improvement**" : c.verdict
      return `| ${c.suite} | ${c.name} | ${c.backend} | ${fmt(c.old)} ${c.old !== undefined ? c.unit : ""} | ${fmt(c.new)} ${c.new !== undefined ? c.unit : ""} | ${pct(c.change)} | ${c.threshold !== undefined ? `±${(c.threshold * 100).toFixed(1)}%` : ""} | ${v} |`
    }),
  ]
  return lines.join("\n") + "\n"
}

/** Compare, print and write `reports/compare.md` (or `out`). Returns the changes. */
export function compareFiles(oldPath: string, newPath: string, out = join(benchRoot, "reports", "compare.md")): Change[] {
  const oldR = JSON.parse(readFileSync(oldPath, "utf8")) as Report
  const newR = JSON.parse(readFileSync(newPath, "utf8")) as Report
  const changes = compareReports(oldR, newR)
  const md = compareMarkdown(changes, oldPath, newPath)
  writeFileSync(out, md)
  console.log(md)
  console.error(`wrote ${out}`)
  return changes
}

if (import.meta.main) {
  const [oldPath, newPath = join(benchRoot, "reports", "bench.json")] = process.argv.slice(2).filter((a) => !a.startsWith("--"))
  if (!oldPath || !existsSync(oldPath) || !existsSync(newPath)) {
    console.error("usage: bun bench/lib/compare.ts <old.json> [<new.json>]")
    process.exit(2)
  }
  const changes = compareFiles(oldPath, newPath)
  process.exit(changes.some((c) => c.verdict === "regression") && process.argv.includes("--fail-on-regression") ? 1 : 0)
}
