/**
 * The bench suites run end to end in quick mode and write a report with the expected rows and
 * finite values; every kernel the suite announces has exactly one row per backend, agrees with the
 * TypeScript reference within its tolerance, and every ratio is the one its two rows' values give
 * (oriented by unit); a corrupted backend is reported WRONG. No timing assertions: this machine is
 * shared and the numbers are not the point.
 */
import { expect, test } from "bun:test"
import { existsSync, readFileSync, rmSync } from "node:fs"
import { join, resolve } from "node:path"
import { lowerIsBetter } from "../bench/lib/compare.ts"

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
  check?: string
  max_err?: number
  tol?: number
}

const torchAvailable = Bun.spawnSync(["python3", "-c", "import torch"]).exitCode === 0

const CPU = "candle CPU (bun:ffi)"
const CPU_OP = "candle CPU, engine op only"

/** The kernels the suite says it measured: its `[bench] kernels <name>: <backend> <ms> ms, ...` log lines. */
const announcedKernels = (stderr: string) => [...stderr.matchAll(/^\[bench\] kernels (.+?): TypeScript reference [\d.e+-]+ ms/gm)].map((m) => m[1]!)

/** `row.ratio` is the baseline row's value over this row's (this row's over the baseline's for a
 *  higher-is-better unit), so > 1 means better than the baseline. Returns the baseline row. */
function expectRatioFromRows(rows: Row[], r: Row): Row | undefined {
  const base = rows.find((b) => b.suite === r.suite && b.name === r.name && b.backend === r.baseline)
  if (!base) return undefined
  const want = lowerIsBetter(r.unit) ? base.value / r.value : r.value / base.value
  expect(Math.abs(r.ratio! - want) / want, `${r.suite} / ${r.name} / ${r.backend}: ratio ${r.ratio} vs ${want} from the rows`).toBeLessThan(1e-9)
  return base
}

test(
  "bun bench/run.ts --quick runs every suite and writes a complete report (JSON, markdown, SVG per suite)",
  () => {
    rmSync(report, { force: true })
    const p = Bun.spawnSync([process.execPath, join(repo, "bench", "run.ts"), "--quick"], {
      cwd: repo,
      env: process.env,
      stdout: "pipe",
      stderr: "pipe",
    })
    const err = p.stderr.toString()
    if (p.exitCode !== 0) console.error(err)
    expect(p.exitCode).toBe(0)
    expect(existsSync(report)).toBe(true)
    const j = JSON.parse(readFileSync(report, "utf8")) as {
      machine: { cores: number; commit: string }
      quick: boolean
      suites: string[]
      versions: Record<string, string | null>
      absent_backends: Record<string, string>
      failed_suites: Record<string, string>
      rows: Row[]
    }
    expect(j.quick).toBe(true)
    expect(j.suites).toEqual(expect.arrayContaining(["kernels", "tokenizer", "model"]))
    expect(j.failed_suites).toEqual({})
    expect(j.machine.cores).toBeGreaterThan(0)
    expect(j.machine.commit).not.toBe("")
    expect(j.versions.bun).toBe(Bun.version)
    expect(j.versions.candle).toMatch(/^0\.11/)

    // Markdown with the key figures, and one SVG chart per suite that has rows.
    const md = readFileSync(join(repo, "bench", "reports", "bench-quick.md"), "utf8")
    expect(md).toContain("## Key figures (CPU)")
    expect(md).toMatch(/training tokens\/s/)
    expect(md).toMatch(/decode tokens\/s/)
    expect(md).toMatch(/tokenizer encode MB\/s/)
    expect(md).toMatch(/FFI overhead per call: \*\*/)
    for (const suite of new Set(j.rows.map((r) => r.suite))) {
      const svg = join(repo, "bench", "reports", `bench-quick-${suite}.svg`)
      expect(existsSync(svg), svg).toBe(true)
      expect(readFileSync(svg, "utf8")).toStartWith("<svg")
    }

    // Kernels: every kernel checked against the TS reference before it is timed; on this build
    // the CPU backend agrees with it; absent backends are stated, not faked.
    const kr = j.rows.filter((r) => r.suite === "kernels")
    const kernelNames = new Set(kr.map((r) => r.name))
    expect(kernelNames.size).toBeGreaterThanOrEqual(10)
    for (const re of [/^matmul/, /^rms_norm/, /^rope rotate-half/, /^rope interleaved/, /^attention/, /cross-entropy/, /^AdamW/])
      expect([...kernelNames].some((n) => re.test(n)), String(re)).toBe(true)
    // One row per kernel the suite announced, per backend: the reference, the whole call, the engine op.
    expect([...kernelNames].sort()).toEqual([...new Set(announcedKernels(err))].sort())
    expect(announcedKernels(err).length).toBe(kernelNames.size)
    for (const name of kernelNames) {
      const of = kr.filter((r) => r.name === name)
      const cpuSide = of.filter((r) => !r.backend.includes("CUDA")).map((r) => r.backend).sort()
      expect(cpuSide, name).toEqual([CPU, CPU_OP, "TypeScript reference"].sort())
      expect(new Set(of.map((r) => r.backend)).size, `${name}: a backend twice`).toBe(of.length)
      const refRow = of.find((r) => r.backend === "TypeScript reference")!
      expect(refRow.check).toBe("reference")
      expect(refRow.ratio).toBeUndefined()
      const cpu = of.find((r) => r.backend === CPU)!
      expect(cpu.check, name).toBe("ok")
      expect(cpu.unit).toBe("ms/call")
      expect(Number.isFinite(cpu.max_err)).toBe(true)
      expect(cpu.max_err!).toBeGreaterThanOrEqual(0)
      expect(cpu.max_err!).toBeLessThanOrEqual(cpu.tol!)
      expect(cpu.tol!).toBeLessThanOrEqual(1e-4)
      for (const r of of.filter((r) => r.backend !== "TypeScript reference")) {
        expect(r.baseline).toBe("TypeScript reference")
        expect(expectRatioFromRows(kr, r), `${name} / ${r.backend}: baseline row`).toBe(refRow)
      }
    }
    for (const r of kr) expect(["reference", "ok", "WRONG"]).toContain(r.check!)
    if (!existsSync(join(repo, "dist", "native", "libbunmind-cuda.so"))) {
      expect(j.absent_backends["candle CUDA (bun:ffi)"]).toMatch(/not present/)
      expect(kr.some((r) => r.backend.includes("CUDA"))).toBe(false)
    }
    expect(j.rows.some((r) => r.suite === "ffi" && /kernel call overhead/.test(r.name))).toBe(true)

    // --compare of a report with itself: no change is real.
    const c = Bun.spawnSync([process.execPath, join(repo, "bench", "lib", "compare.ts"), report, report], { cwd: repo, stdout: "pipe", stderr: "pipe" })
    expect(c.exitCode).toBe(0)
    const cmp = readFileSync(join(repo, "bench", "reports", "compare.md"), "utf8")
    expect(cmp).toContain("**0 regression(s), 0 improvement(s)**")
    expect(cmp).not.toContain("REGRESSION")
    for (const r of j.rows) {
      expect(Number.isFinite(r.value)).toBe(true)
      expect(r.value).toBeGreaterThan(0)
      if (r.spread !== undefined) expect(Number.isFinite(r.spread)).toBe(true)
      if (r.ratio !== undefined) {
        expect(Number.isFinite(r.ratio) && r.ratio > 0).toBe(true)
        expect(r.baseline, `${r.suite} / ${r.name}: a ratio names its baseline`).toBeDefined()
        expectRatioFromRows(j.rows, r)
      }
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
        expect(expectRatioFromRows(model, r!)?.backend, `${re}: the PyTorch row the ratio is taken against`).toStartWith("PyTorch")
      }
    }
  },
  { timeout: 600_000 }, // quick mode takes ~1 min on a quiet machine; generous for a loaded one
)

test(
  "a backend that disagrees with the reference is reported as WRONG, not timed, no ratio",
  () => {
    const p = Bun.spawnSync([process.execPath, join(repo, "bench", "kernels.ts"), "--quick"], {
      cwd: repo,
      env: { ...process.env, BUNMIND_BENCH_FAULT: "candle CPU" },
      stdout: "pipe",
      stderr: "pipe",
    })
    if (p.exitCode !== 0) console.error(p.stderr.toString())
    expect(p.exitCode).toBe(0)
    const j = JSON.parse(readFileSync(join(repo, "bench", "reports", "kernels-quick.json"), "utf8")) as { rows: Row[] }
    const kr = j.rows.filter((r) => r.suite === "kernels")
    const cpu = kr.filter((r) => r.backend.startsWith("candle CPU"))
    expect(cpu.length).toBeGreaterThan(0)
    for (const r of cpu) {
      expect(r.check).toBe("WRONG")
      expect(r.ratio).toBeUndefined()
      expect(r.unit).toBe("max rel. error")
      expect(r.max_err!).toBeGreaterThan(r.tol!)
      expect(r.value).toBe(r.max_err!)
    }
    // Every kernel: still its reference row, and exactly one WRONG row for the corrupted backend
    // (no timed whole-call or engine-op row).
    const names = new Set(kr.map((r) => r.name))
    expect(names.size).toBeGreaterThanOrEqual(10)
    for (const name of names) {
      expect(kr.filter((r) => r.name === name && r.backend === "TypeScript reference").map((r) => r.check)).toEqual(["reference"])
      expect(cpu.filter((r) => r.name === name).map((r) => `${r.backend}: ${r.check}`)).toEqual([`${CPU}: WRONG`])
    }
  },
  { timeout: 120_000 },
)

test("compare: a change is real only beyond the measured spread, oriented by unit", async () => {
  const { compareReports } = await import("../bench/lib/compare.ts")
  const row = (value: number, spread: number, unit = "tokens/s") => ({ suite: "s", name: "n", backend: "b", unit, value, spread })
  const v = (o: ReturnType<typeof row>, n: ReturnType<typeof row>) => compareReports({ rows: [o] }, { rows: [n] })[0]!.verdict
  expect(v(row(100, 0.1), row(95, 0.1))).toBe("within noise")
  expect(v(row(100, 0.1), row(80, 0.1))).toBe("regression")
  expect(v(row(100, 0.1), row(80, 0.3))).toBe("within noise")
  expect(v(row(100, 0.1), row(120, 0.1))).toBe("improvement")
  expect(v(row(10, 0.05, "ms/call"), row(12, 0.05, "ms/call"))).toBe("regression")
  expect(v(row(10, 0.05, "ms/call"), row(8, 0.05, "ms/call"))).toBe("improvement")
})
