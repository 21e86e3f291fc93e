/** Shared report plumbing for bench suites: machine facts, stats over samples, JSON + markdown. */
import { mkdirSync, writeFileSync } from "node:fs"
import { cpus, totalmem } from "node:os"
import { join, resolve } from "node:path"

export const benchRoot = resolve(import.meta.dir, "..")
export const repoRoot = resolve(benchRoot, "..")

export interface Stats {
  median: number
  min: number
  max: number
  /** (max - min) / median: the spread a change must exceed to be called real. */
  spread: number
  n: number
}

export function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b)
  const mid = s.length >> 1
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
  return { median, min: s[0]!, max: s[s.length - 1]!, spread: median ? (s[s.length - 1]! - s[0]!) / median : 0, n: s.length }
}

export interface Row {
  suite: string
  name: string
  backend: string
  unit: string
  value: number
  spread?: number
  baseline?: string
  /** value / baseline value, oriented so that > 1 means better than the baseline. */
  ratio?: number
  note?: string
}

export function machine() {
  const git = Bun.spawnSync(["git", "rev-parse", "--short", "HEAD"], { cwd: repoRoot })
  return {
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    memory_gib: +(totalmem() / 2 ** 30).toFixed(1),
    platform: `${process.platform}-${process.arch}`,
    bun: Bun.version,
    commit: git.exitCode === 0 ? git.stdout.toString().trim() : "unknown",
    date: new Date().toISOString(),
  }
}

export function markdown(title: string, rows: Row[]): string {
  const lines = [
    `## ${title}`,
    "",
    "| suite | benchmark | backend | value | spread | baseline | ratio |",
    "|---|---|---|---:|---:|---|---:|",
    ...rows.map(
      (r) =>
        `| ${r.suite} | ${r.name} | ${r.backend} | ${fmt(r.value)} ${r.unit} | ${r.spread !== undefined ? `±${(r.spread * 50).toFixed(1)}%` : ""} | ${r.baseline ?? ""} | ${r.ratio !== undefined ? `${r.ratio.toFixed(2)}×` : ""} |`,
    ),
  ]
  return lines.join("\n") + "\n"
}

const fmt = (v: number) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3))

export function writeReport(name: string, rows: Row[], extra: Record<string, unknown> = {}, outDir = join(benchRoot, "reports")): { json: string; md: string } {
  mkdirSync(outDir, { recursive: true })
  const json = join(outDir, `${name}.json`)
  const md = join(outDir, `${name}.md`)
  writeFileSync(json, JSON.stringify({ machine: machine(), ...extra, rows }, null, 2) + "\n")
  writeFileSync(md, `# bunmind bench: ${name}\n\n${JSON.stringify(machine())}\n\n${markdown(name, rows)}`)
  return { json, md }
}
