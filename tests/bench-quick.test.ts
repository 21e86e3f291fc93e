/**
 * The bench suites run end to end in quick mode and write a report with the expected rows and
 * finite values. No timing assertions: this machine is shared and the numbers are not the point.
 */
import { expect, test } from "bun:test"
import { existsSync, readFileSync, rmSync } from "node:fs"
import { join, resolve } from "node:path"

const repo = resolve(import.meta.dir, "..")
const report = join(repo, "bench", "reports", "bench-quick.json")

interface Row {
  suite: string
  name: string
  backend: string
  unit: string
  value: number
  spread?: number
  baseline?: string
  ratio?: number
}

const torchAvailable = Bun.spawnSync(["python3", "-c", "import torch"]).exitCode === 0

test(
  "bun bench/run.ts tokenizer model --quick writes a complete report",
  () => {
    rmSync(report, { force: true })
    const p = Bun.spawnSync([process.execPath, join(repo, "bench", "run.ts"), "tokenizer", "model", "--quick"], {
      cwd: repo,
      env: process.env,
      stdout: "pipe",
      stderr: "pipe",
    })
    const err = p.stderr.toString()
    if (p.exitCode !== 0) console.error(err)
    expect(p.exitCode).toBe(0)
    expect(existsSync(report)).toBe(true)
    const j = JSON.parse(readFileSync(report, "utf8")) as { machine: { cores: number }; quick: boolean; suites: string[]; rows: Row[] }
    expect(j.quick).toBe(true)
    expect(j.suites).toEqual(["tokenizer", "model"])
    expect(j.machine.cores).toBeGreaterThan(0)
    for (const r of j.rows) {
      expect(Number.isFinite(r.value)).toBe(true)
      expect(r.value).toBeGreaterThan(0)
      if (r.spread !== undefined) expect(Number.isFinite(r.spread)).toBe(true)
      if (r.ratio !== undefined) expect(Number.isFinite(r.ratio) && r.ratio > 0).toBe(true)
    }

    const tok = j.rows.filter((r) => r.suite === "tokenizer")
    expect(tok.some((r) => r.name.startsWith("encode, one call per document") && r.backend.startsWith("bunmind"))).toBe(true)
    expect(j.rows.some((r) => r.suite === "ffi")).toBe(true)

    const model = j.rows.filter((r) => r.suite === "model")
    const bm = model.filter((r) => r.backend.startsWith("bunmind"))
    const want: [RegExp, string][] = [
      [/train step/, "tokens/s"],
      [/prefill forward/, "tokens/s"],
      [/decode, batch 1, KV cache/, "tokens/s"],
      [/time to first token/, "ms"],
      [/peak RSS/, "MiB"],
    ]
    for (const [re, unit] of want) {
      const r = bm.find((x) => re.test(x.name))
      expect(r, `bunmind row ${re}`).toBeDefined()
      expect(r!.unit).toBe(unit)
      if (torchAvailable) {
        // The PyTorch baseline ran in the same run: a row of its own and a ratio on ours.
        expect(r!.baseline ?? "").toContain("PyTorch")
        expect(Number.isFinite(r!.ratio)).toBe(true)
        expect(model.some((x) => re.test(x.name) && x.backend.startsWith("PyTorch"))).toBe(true)
      }
    }
  },
  { timeout: 300_000 },
)
