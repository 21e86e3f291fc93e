/**
 * `runs/<name>/report.html` from a synthetic run directory: stage table figures, one SVG per chart,
 * malformed-line note, no external resources, robustness to partial runs; a headless-chromium
 * screenshot (tests/.out/report.png) when /usr/bin/chromium exists.
 */
import { describe, expect, test } from "bun:test"
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { downsample, loadRun, parseMetrics, renderRunReport, writeRunReport } from "../src/report/index.ts"

const out = join(import.meta.dir, ".out")
const runDir = join(out, "report-run")

const writeJson = (p: string, v: unknown) => {
  mkdirSync(join(p, ".."), { recursive: true })
  writeFileSync(p, JSON.stringify(v, null, 2))
}

/** Deterministic pseudo-noise. */
const noise = (i: number) => Math.sin(i * 12.9898) * 0.5 + Math.sin(i * 0.37) * 0.3

const PRETRAIN_STEPS = 2500

const buildRun = () => {
  rmSync(runDir, { recursive: true, force: true })
  mkdirSync(runDir, { recursive: true })
  writeJson(join(runDir, "run.json"), {
    name: "report-run",
    created: "2025-01-02T03:04:05Z",
    command: "bunmind train --preset tiny --stages pretrain,sft,dpo",
    stages: ["pretrain", "sft", "dpo"],
    config: { preset: "tiny", seed: 42, stages: { pretrain: { lr: 5e-4 }, sft: { lr: 5e-5 }, dpo: { lr: 4e-8, beta: 0.1 } } },
  })
  mkdirSync(join(runDir, "tokenizer"), { recursive: true })
  writeJson(join(runDir, "tokenizer", "tokenizer.json"), { model: { vocab: { a: 0, b: 1, c: 2 } }, added_tokens: [{ id: 6399 }] })

  // pretrain: long series (downsampled), eval rows as separate lines.
  const pre: string[] = []
  for (let s = 1; s <= PRETRAIN_STEPS; s++) {
    const loss = 2.2 + 6 * Math.exp(-s / 300) + 0.08 * noise(s)
    const lr = s < 100 ? (5e-4 * s) / 100 : 5e-5 + 0.5 * (5e-4 - 5e-5) * (1 + Math.cos((Math.PI * (s - 100)) / (PRETRAIN_STEPS - 100)))
    pre.push(JSON.stringify({ step: s, epoch: 0, loss, lr, grad_norm: 1 + 3 * Math.exp(-s / 200) + 0.2 * Math.abs(noise(s)), tokens: s * 8192, tokens_per_s: 40000 + 2000 * noise(s * 3), elapsed_s: s * 0.2 }))
    if (s % 250 === 0) pre.push(JSON.stringify({ step: s, eval_loss: 2.3 + 6 * Math.exp(-s / 300) }))
  }
  mkdirSync(join(runDir, "pretrain"), { recursive: true })
  writeFileSync(join(runDir, "pretrain", "metrics.jsonl"), pre.join("\n") + "\n")
  writeJson(join(runDir, "pretrain", "config.json"), { stage: "pretrain", lr: 5e-4, batch_size: 32, max_len: 256, epochs: 1 })
  writeJson(join(runDir, "pretrain", "summary.json"), {
    stage: "pretrain", status: "done", steps: PRETRAIN_STEPS, tokens: PRETRAIN_STEPS * 8192, elapsed_s: 500.4, final_loss: 2.345678,
    final_eval_loss: 2.41234, params: 25_830_000, trainable_params: 25_830_000, tokens_per_s: 40921.3,
  })

  // sft: eval inline, one malformed line in the middle.
  const sft: string[] = []
  for (let s = 1; s <= 300; s++) {
    const row: Record<string, number> = { step: s, epoch: s > 150 ? 1 : 0, loss: 1.8 + 0.6 * Math.exp(-s / 60) + 0.05 * noise(s), lr: 5e-5, grad_norm: 0.8 + 0.1 * noise(s), tokens: s * 4096, tokens_per_s: 30000 + 1500 * noise(s), elapsed_s: s * 0.14 }
    if (s % 100 === 0) row.eval_loss = 1.9 + 0.6 * Math.exp(-s / 60)
    sft.push(JSON.stringify(row))
    if (s === 137) sft.push(`{"step": 137, "loss": 1.9, "lr": 5e-5, "grad_no`)
  }
  mkdirSync(join(runDir, "sft"), { recursive: true })
  writeFileSync(join(runDir, "sft", "metrics.jsonl"), sft.join("\n") + "\n")
  writeJson(join(runDir, "sft", "config.json"), { stage: "sft", lr: 5e-5, from: "pretrain" })
  writeJson(join(runDir, "sft", "summary.json"), {
    stage: "sft", status: "done", steps: 300, tokens: 300 * 4096, elapsed_s: 42, final_loss: 1.812345, final_eval_loss: 1.87654,
    params: 25_830_000, trainable_params: 25_830_000, tokens_per_s: 29257.1, best_eval_loss: 1.87654,
  })

  // dpo: interrupted, no summary.json.
  const dpo: string[] = []
  for (let s = 1; s <= 120; s++) {
    dpo.push(JSON.stringify({ step: s, epoch: 0, loss: 0.69 - 0.2 * (1 - Math.exp(-s / 40)) + 0.02 * noise(s), lr: 4e-8, grad_norm: 0.3 + 0.05 * noise(s), tokens: s * 2048, tokens_per_s: 12000 + 500 * noise(s), elapsed_s: s * 0.17, dpo_accuracy: Math.min(1, 0.5 + 0.3 * (1 - Math.exp(-s / 30)) + 0.05 * noise(s)), reward_margin: 0.4 * (1 - Math.exp(-s / 50)), kl: 0.01 * s }))
  }
  mkdirSync(join(runDir, "dpo"), { recursive: true })
  writeFileSync(join(runDir, "dpo", "metrics.jsonl"), dpo.join("\n") + "\n")
  writeJson(join(runDir, "dpo", "config.json"), { stage: "dpo", beta: 0.1, lr: 4e-8 })

  writeJson(join(runDir, "eval", "summary.json"), {
    heldout: { pretrain: { accuracy: 0.21, correct: 21, total: 100 }, sft: { accuracy: 0.48, correct: 48, total: 100 }, dpo: { accuracy: 0.52, correct: 52, total: 100 } },
    samples: [
      { question: "What is the capital of France?", answer: "Paris", model: { pretrain: "the the the", sft: "Paris.", dpo: "The capital of France is Paris." } },
      { question: "2 + 2 = ?", answer: "4", model: { pretrain: "2 + 2 = 2 + 2 =", sft: "4", dpo: "4 <script>alert(1)</script>" } },
    ],
    ceval: { pretrain: { accuracy: 0.25, n: 1346 }, sft: { accuracy: 0.27, n: 1346 } },
  })
}

describe("run report", () => {
  let html = ""
  let path = ""

  test("writeRunReport writes report.html", async () => {
    buildRun()
    path = await writeRunReport(runDir)
    expect(path).toBe(join(runDir, "report.html"))
    expect(existsSync(path)).toBe(true)
    html = readFileSync(path, "utf8")
    expect(html.startsWith("<!doctype html>")).toBe(true)
  })

  test("one SVG per chart", () => {
    // loss × 3 stages, lr, throughput, grad norm, DPO metrics, held-out accuracy
    const svgs = html.match(/<svg\b/g) ?? []
    expect(svgs.length).toBe(8)
    for (const id of ["loss-pretrain", "loss-sft", "loss-dpo", "lr", "throughput", "grad-norm", "prefs-dpo", "heldout"]) {
      const m = html.match(new RegExp(`<figure class="chart[^"]*" id="chart-${id}">[\\s\\S]*?</figure>`))
      expect(m, id).not.toBeNull()
      expect(m![0]).toContain("<svg")
    }
    expect(html).not.toContain("chart could not be rendered")
    expect(html).toContain("2,500 points, drawn as 2000")
  })

  test("stage table rows", () => {
    const row = (stage: string) => html.match(new RegExp(`<tr data-stage="${stage}">[\\s\\S]*?</tr>`))?.[0] ?? ""
    const pre = row("pretrain")
    expect(pre).toContain("done")
    expect(pre).toContain("2,500")
    expect(pre).toContain("20.48M") // tokens
    expect(pre).toContain("8m 20s")
    expect(pre).toContain("40.92K")
    expect(pre).toContain("2.3457")
    expect(pre).toContain("2.4123")
    expect(pre).toContain("25.83M")
    const sft = row("sft")
    expect(sft).toContain("1.8123")
    expect(sft).toContain("1.8765")
    expect(sft).toContain("best_eval_loss")
    expect(sft).toContain("1 malformed line skipped")
    const dpo = row("dpo")
    expect(dpo).toContain("incomplete")
    expect(dpo).toContain("no summary.json")
    expect(dpo).toContain("120*") // steps derived from metrics
    expect(dpo).toContain("dpo_accuracy")
    expect(dpo).toContain("kl")
    // order follows run.json
    expect(html.indexOf('data-stage="pretrain"')).toBeLessThan(html.indexOf('data-stage="sft"'))
    expect(html.indexOf('data-stage="sft"')).toBeLessThan(html.indexOf('data-stage="dpo"'))
  })

  test("header, eval, samples, configs", () => {
    expect(html).toContain("report-run")
    expect(html).toContain("bunmind train --preset tiny")
    expect(html).toContain(Bun.version)
    expect(html).toMatch(/\d+ cores/)
    expect(html).toContain("vocabulary 6,400")
    expect(html).toContain("What is the capital of France?")
    expect(html).toContain("The capital of France is Paris.")
    expect(html).not.toContain("<script>alert(1)</script>")
    expect(html).toContain("&lt;script&gt;alert(1)&lt;/script&gt;")
    expect(html).toContain("48.0%")
    expect(html).toContain("<h3>ceval</h3>")
    expect(html).toContain("<summary>dpo/config.json</summary>")
    expect(html).toContain("&quot;beta&quot;: 0.1")
  })

  test("no external resources", () => {
    expect(html).not.toMatch(/\b(src|href)\s*=\s*["']?\s*(https?:)?\/\//i)
    expect(html).not.toMatch(/@import|url\(\s*["']?https?:/i)
    expect(html).not.toMatch(/<script\b/i)
    expect(html).not.toMatch(/<link\b/i)
  })

  test("screenshot in headless chromium", () => {
    const chromium = "/usr/bin/chromium"
    if (!existsSync(chromium)) {
      console.log("skipped: no /usr/bin/chromium")
      return
    }
    const png = join(out, "report.png")
    rmSync(png, { force: true })
    const r = Bun.spawnSync(
      [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", `--screenshot=${png}`, "--window-size=1200,2000", `file://${path}`],
      { stdout: "pipe", stderr: "pipe", timeout: 60_000 },
    )
    expect(existsSync(png), r.stderr.toString()).toBe(true)
  })
})

describe("robustness", () => {
  test("partial and malformed runs render without throwing", async () => {
    const dir = join(out, "report-partial")
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(join(dir, "pretrain"), { recursive: true })
    writeFileSync(join(dir, "pretrain", "metrics.jsonl"), "")
    writeFileSync(join(dir, "pretrain", "summary.json"), "{ not json")
    mkdirSync(join(dir, "sft"), { recursive: true })
    writeFileSync(join(dir, "sft", "metrics.jsonl"), 'garbage\n[1,2]\n{"loss": 1}\n{"step": 1, "loss": 2.5}\n{"step": 2, "loss": null, "eval_loss": 2.7}\n{"step":')
    mkdirSync(join(dir, "eval"), { recursive: true })
    writeFileSync(join(dir, "eval", "summary.json"), JSON.stringify({ heldout: { sft: 0.3 }, weird: [1, [2, 3]] }))
    const p = await writeRunReport(dir)
    const html = readFileSync(p, "utf8")
    expect(html).toContain("4 malformed lines skipped")
    expect(html).toContain("pretrain/summary.json: could not be parsed")
    expect(html).toContain("metrics.jsonl has no usable rows")
    expect(html).toContain("no run.json")
    expect(html).toContain('id="chart-loss-sft"')
    expect(html).not.toContain('id="chart-loss-pretrain"')
    expect(html).toContain("30.0%")
  })

  test("empty run directory", async () => {
    const dir = join(out, "report-empty")
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(dir, { recursive: true })
    const html = await renderRunReport(loadRun(dir))
    expect(html).toContain("No stages found")
    expect(html.match(/<svg\b/g)).toBeNull()
    await expect(writeRunReport(join(out, "does-not-exist"))).rejects.toThrow("not a run directory")
  })

  test("stages listed in run.json but never started", async () => {
    const dir = join(out, "report-listed")
    rmSync(dir, { recursive: true, force: true })
    writeJson(join(dir, "run.json"), { name: "listed", stages: [{ name: "pretrain" }, "sft"] })
    const html = await renderRunReport(loadRun(dir))
    expect(html).toContain("not started")
  })

  test("parseMetrics", () => {
    const r = parseMetrics('{"step":1,"loss":3}\n\n  \nnope\n{"step":"2"}\n{"step":2,"loss":2,"note":"x"}\n')
    expect(r.malformed).toBe(2)
    expect(r.rows).toEqual([{ step: 1, loss: 3 }, { step: 2, loss: 2 }])
  })

  test("downsample keeps ends and extremes", () => {
    const pts = Array.from({ length: 10_000 }, (_, i) => ({ x: i, y: i === 5000 ? 100 : i === 7000 ? -100 : Math.sin(i) }))
    const d = downsample(pts, (p) => p.y, 2000)
    expect(d.length).toBeLessThanOrEqual(2000)
    expect(d[0]).toBe(pts[0]!)
    expect(d[d.length - 1]).toBe(pts[9999]!)
    expect(d.some((p) => p.y === 100)).toBe(true)
    expect(d.some((p) => p.y === -100)).toBe(true)
    for (let i = 1; i < d.length; i++) expect(d[i]!.x).toBeGreaterThan(d[i - 1]!.x)
    expect(downsample(pts.slice(0, 50), (p) => p.y, 2000).length).toBe(50)
  })
})
