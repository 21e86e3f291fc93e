/**
 * `runs/<name>/report.html`: a self-contained report card of a training run (inline CSS and SVG,
 * no external requests). Header with the run and machine, a table of every stage, training curves
 * (vega-lite → vega → SVG, rendered here), held-out evaluation, sample answers and every stage's
 * exact config. Renders whatever exists: partial runs, interrupted stages, malformed metric lines.
 */
import { existsSync, statSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { accuracySpec, lossSpec, MAX_POINTS, multiMetricSpec, perStageSpec, renderSvg } from "./charts.ts"
import { loadRun, type Json, type JsonObject, type RunData, type StageData } from "./load.ts"

export { loadRun, parseMetrics, hostMachine } from "./load.ts"
export type { RunData, StageData, MachineInfo, MetricRow, EvalData } from "./load.ts"

// ---------------------------------------------------------------------------------------------
// Formatting

const esc = (s: unknown): string =>
  String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;")

const DASH = `<span class="na">–</span>`

/** 1234 → "1.23K", 25_830_000 → "25.83M". */
export const fmtCount = (n: number | undefined): string => {
  if (n === undefined || !Number.isFinite(n)) return DASH
  const a = Math.abs(n)
  const units: [number, string][] = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]]
  for (const [d, u] of units) if (a >= d) return `${(n / d).toFixed(2)}${u}`
  return Number.isInteger(n) ? String(n) : n.toFixed(1)
}

export const fmtLoss = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? DASH : n.toFixed(4))

/** Seconds as "12.3s", "4m 05s" or "2h 03m". */
export const fmtDuration = (s: number | undefined): string => {
  if (s === undefined || !Number.isFinite(s)) return DASH
  if (s < 60) return `${s.toFixed(1)}s`
  const m = Math.floor(s / 60)
  if (s < 3600) return `${m}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`
  return `${Math.floor(s / 3600)}h ${String(m % 60).padStart(2, "0")}m`
}

const fmtBytes = (b: number | undefined): string => (b === undefined ? "?" : `${(b / 1024 ** 3).toFixed(1)} GiB`)

/** An extra summary number: accuracies as percentages, integers compact, others 4 significant digits. */
const fmtExtra = (key: string, v: Json): string => {
  if (typeof v === "number") {
    if (/acc/i.test(key) && v >= 0 && v <= 1) return `${(v * 100).toFixed(1)}%`
    if (Number.isInteger(v)) return Math.abs(v) < 1e6 ? v.toLocaleString("en-US") : fmtCount(v)
    return Math.abs(v) >= 1000 ? fmtCount(v) : String(Number(v.toPrecision(4)))
  }
  return esc(typeof v === "string" ? v : JSON.stringify(v))
}

const pct = (v: number) => `${(v * 100).toFixed(1)}%`

// ---------------------------------------------------------------------------------------------
// Stage figures

const STANDARD_KEYS = new Set([
  "stage", "status", "steps", "tokens", "elapsed_s", "final_loss", "final_eval_loss", "params", "trainable_params", "tokens_per_s",
])
/** Extras shown first, in this order, when present (summary or last metrics row). */
const KEY_EXTRAS = ["dpo_accuracy", "reward_margin", "kl", "final_dpo_accuracy", "final_reward_margin", "final_kl"]

export interface StageFigures {
  readonly name: string
  readonly status: string
  readonly steps?: number
  readonly tokens?: number
  readonly elapsed?: number
  readonly tokensPerS?: number
  readonly finalLoss?: number
  readonly finalEvalLoss?: number
  readonly params?: number
  readonly trainable?: number
  readonly extras: [string, Json][]
  /** Figures taken from metrics.jsonl because summary.json lacked them. */
  readonly derived: Set<string>
}

const lastOf = (rows: StageData["metrics"], key: string): number | undefined => {
  for (let i = rows.length - 1; i >= 0; i--) {
    const v = rows[i]![key]
    if (v !== undefined) return v
  }
  return undefined
}

/** The stage table's figures: summary.json first, metrics.jsonl for whatever it lacks. */
export const stageFigures = (st: StageData): StageFigures => {
  const s = st.summary ?? {}
  const derived = new Set<string>()
  const num = (k: string): number | undefined => (typeof s[k] === "number" && Number.isFinite(s[k]) ? (s[k] as number) : undefined)
  const pick = (field: string, fromSummary: number | undefined, fromMetrics: () => number | undefined) => {
    if (fromSummary !== undefined) return fromSummary
    const v = fromMetrics()
    if (v !== undefined) derived.add(field)
    return v
  }
  const rows = st.metrics
  const trainRows = rows.filter((r) => r.loss !== undefined)
  const steps = pick("steps", num("steps"), () => (rows.length ? Math.max(...rows.map((r) => r.step)) : undefined))
  const tokens = pick("tokens", num("tokens"), () => lastOf(rows, "tokens"))
  const elapsed = pick("elapsed", num("elapsed_s"), () => lastOf(rows, "elapsed_s"))
  const tokensPerS = pick("tokensPerS", num("tokens_per_s"), () => {
    if (tokens !== undefined && elapsed) return tokens / elapsed
    const tps = rows.map((r) => r.tokens_per_s).filter((v): v is number => v !== undefined)
    return tps.length ? tps.reduce((a, b) => a + b, 0) / tps.length : undefined
  })
  const finalLoss = pick("finalLoss", num("final_loss"), () => lastOf(trainRows, "loss"))
  const finalEvalLoss = pick("finalEvalLoss", num("final_eval_loss"), () => lastOf(rows, "eval_loss"))
  const status =
    typeof s.status === "string" ? s.status : !st.exists ? "not started" : st.summary ? "unknown" : rows.length ? "incomplete" : "empty"
  const extras: [string, Json][] = []
  const seen = new Set<string>()
  for (const k of KEY_EXTRAS) {
    if (s[k] !== undefined && s[k] !== null) {
      extras.push([k, s[k]!])
      seen.add(k)
    }
  }
  // DPO/distillation figures missing from the summary: the last logged value.
  for (const k of ["dpo_accuracy", "reward_margin", "kl"]) {
    if (seen.has(k) || seen.has(`final_${k}`)) continue
    const v = lastOf(rows, k)
    if (v !== undefined) {
      extras.push([k, v])
      seen.add(k)
      derived.add(k)
    }
  }
  for (const [k, v] of Object.entries(s)) {
    if (STANDARD_KEYS.has(k) || seen.has(k) || v === null) continue
    if (typeof v === "number" || typeof v === "boolean" || (typeof v === "string" && v.length <= 40)) extras.push([k, v])
  }
  return {
    name: st.name,
    status,
    steps,
    tokens,
    elapsed,
    tokensPerS,
    finalLoss,
    finalEvalLoss,
    params: num("params"),
    trainable: num("trainable_params"),
    extras,
    derived,
  }
}

// ---------------------------------------------------------------------------------------------
// Charts

export interface Chart {
  readonly id: string
  readonly title: string
  readonly caption?: string
  readonly svg?: string
  readonly error?: string
  readonly wide?: boolean
}

const chart = async (id: string, title: string, spec: () => Record<string, unknown>, extra: Partial<Chart> = {}): Promise<Chart> => {
  try {
    return { id, title, svg: await renderSvg(spec()), ...extra }
  } catch (e) {
    return { id, title, error: (e as Error).message, ...extra }
  }
}

const downsampleNote = (n: number) => (n > MAX_POINTS ? `${n.toLocaleString("en-US")} points, drawn as ${MAX_POINTS} (min/max per bucket)` : undefined)

/** Every chart the run's data supports, in page order. */
export const buildCharts = async (run: RunData): Promise<{ training: Chart[]; eval: Chart[] }> => {
  const training: Chart[] = []
  const stagesWith = (k: string) => run.stages.filter((s) => s.metrics.some((r) => r[k] !== undefined))
  for (const st of run.stages) {
    const train = st.metrics.filter((r) => r.loss !== undefined).map((r) => ({ step: r.step, value: r.loss!, series: "train loss" }))
    const ev = st.metrics.filter((r) => r.eval_loss !== undefined).map((r) => ({ step: r.step, value: r.eval_loss!, series: "eval loss" }))
    if (!train.length && !ev.length) continue
    training.push(await chart(`loss-${st.name}`, `${st.name}: loss`, () => lossSpec(train, ev), { caption: downsampleNote(train.length) }))
  }
  const offsets = new Map<string, number>()
  let offset = 0
  for (const st of run.stages) {
    offsets.set(st.name, offset)
    if (st.metrics.length) offset += Math.max(...st.metrics.map((r) => r.step))
  }
  const perStage = async (key: string, id: string, title: string, axis: string, format?: string, logIfPositive = false) => {
    const stages = stagesWith(key)
    if (!stages.length) return
    // Stages end to end: each stage's steps start where the previous stage's ended.
    const rows = stages.flatMap((s) => s.metrics.filter((r) => r[key] !== undefined).map((r) => ({ step: r.step + (offsets.get(s.name) ?? 0), value: r[key]!, stage: s.name })))
    const log = logIfPositive && rows.every((r) => r.value > 0) && Math.max(...rows.map((r) => r.value)) / Math.min(...rows.map((r) => r.value)) > 20
    const longest = Math.max(...stages.map((s) => s.metrics.filter((r) => r[key] !== undefined).length))
    const caption = [stages.length > 1 ? "steps of all stages end to end" : undefined, downsampleNote(longest)].filter(Boolean).join(" · ")
    training.push(await chart(id, title, () => perStageSpec(rows, stages.map((s) => s.name), { title: axis, format, log, xTitle: stages.length > 1 ? "step (all stages)" : "step" }), { caption: caption || undefined }))
  }
  await perStage("lr", "lr", "learning rate", "learning rate", "~e")
  await perStage("tokens_per_s", "throughput", "throughput", "tokens/s", "~s")
  await perStage("grad_norm", "grad-norm", "gradient norm", "grad norm (before clipping)", "~g", true)
  for (const st of run.stages) {
    const metrics = ["dpo_accuracy", "reward_margin", "kl"].filter((k) => st.metrics.some((r) => r[k] !== undefined))
    if (!metrics.length) continue
    const rows = metrics.flatMap((m) => st.metrics.filter((r) => r[m] !== undefined).map((r) => ({ step: r.step, value: r[m]!, metric: m })))
    training.push(await chart(`prefs-${st.name}`, `${st.name}: ${metrics.join(", ")}`, () => multiMetricSpec(rows, metrics), { wide: true }))
  }

  const evalCharts: Chart[] = []
  const h = run.eval?.heldout
  if (h) {
    const order = orderModels(Object.keys(h), run)
    const rows = order.flatMap((m) => {
      const v = h[m]!
      const acc = typeof v.accuracy === "number" ? v.accuracy : typeof v.correct === "number" && typeof v.total === "number" && v.total > 0 ? v.correct / v.total : undefined
      if (acc === undefined) return []
      const a = acc > 1 ? acc / 100 : acc
      return [{ model: m, accuracy: a, label: typeof v.correct === "number" && typeof v.total === "number" ? `${pct(a)} (${v.correct}/${v.total})` : pct(a) }]
    })
    if (rows.length) evalCharts.push(await chart("heldout", "held-out accuracy per model", () => accuracySpec(rows)))
  }
  return { training, eval: evalCharts }
}

/** Models (eval keys) in the run's stage order, others after. */
const orderModels = (models: string[], run: RunData): string[] => {
  const rank = (m: string) => {
    const i = run.stages.findIndex((s) => s.name === m)
    return i < 0 ? run.stages.length : i
  }
  return [...models].sort((a, b) => rank(a) - rank(b))
}

// ---------------------------------------------------------------------------------------------
// HTML pieces

const isObj = (v: unknown): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v)
const isScalar = (v: unknown): v is null | string | number | boolean => v === null || ["string", "number", "boolean"].includes(typeof v)

const scalarCell = (k: string, v: Json | undefined): string => (v === undefined ? DASH : typeof v === "number" ? fmtExtra(k, v) : esc(v === null ? "null" : String(v)))

const jsonBlock = (v: unknown) => `<pre class="json">${esc(JSON.stringify(v, null, 2))}</pre>`

/** Any JSON value as tables where it has that shape (model × metric, key → value, rows), else JSON. */
const renderGeneric = (v: Json, depth = 0): string => {
  if (isScalar(v)) return `<span>${scalarCell("", v)}</span>`
  if (Array.isArray(v)) {
    if (v.length && v.every((r) => isObj(r) && Object.values(r).every(isScalar))) {
      const cols = [...new Set(v.flatMap((r) => Object.keys(r as JsonObject)))]
      const shown = v.slice(0, 200) as JsonObject[]
      return `<table class="data"><thead><tr>${cols.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead><tbody>${shown
        .map((r) => `<tr>${cols.map((c) => `<td>${scalarCell(c, r[c])}</td>`).join("")}</tr>`)
        .join("")}</tbody></table>${v.length > shown.length ? `<p class="note">${v.length - shown.length} more rows not shown</p>` : ""}`
    }
    return jsonBlock(v)
  }
  const entries = Object.entries(v)
  if (entries.length && entries.every(([, x]) => isObj(x) && Object.values(x).every(isScalar))) {
    const cols = [...new Set(entries.flatMap(([, x]) => Object.keys(x as JsonObject)))]
    return `<table class="data"><thead><tr><th></th>${cols.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead><tbody>${entries
      .map(([k, x]) => `<tr><th>${esc(k)}</th>${cols.map((c) => `<td>${scalarCell(c, (x as JsonObject)[c])}</td>`).join("")}</tr>`)
      .join("")}</tbody></table>`
  }
  if (entries.every(([, x]) => isScalar(x))) {
    return `<table class="data kv"><tbody>${entries.map(([k, x]) => `<tr><th>${esc(k)}</th><td>${scalarCell(k, x)}</td></tr>`).join("")}</tbody></table>`
  }
  if (depth >= 2) return jsonBlock(v)
  return entries.map(([k, x]) => `<div class="generic"><h4>${esc(k)}</h4>${renderGeneric(x, depth + 1)}</div>`).join("")
}

const STATUS_CLASS: Record<string, string> = { done: "ok", interrupted: "warn", failed: "bad", incomplete: "warn", "not started": "muted", empty: "muted" }

const statusBadge = (s: string) => `<span class="badge ${STATUS_CLASS[s] ?? "muted"}">${esc(s)}</span>`

const derivedMark = (f: StageFigures, field: string, html: string) =>
  f.derived.has(field) && !html.includes('class="na"') ? `<span class="derived" title="from metrics.jsonl (not in summary.json)">${html}*</span>` : html

const stageTable = (run: RunData, figs: StageFigures[]): string => {
  if (!figs.length) return `<p class="note">No stages found in this run directory.</p>`
  const rows = figs.map((f, i) => {
    const st = run.stages[i]!
    const params =
      f.params === undefined
        ? DASH
        : f.trainable !== undefined && f.trainable !== f.params
          ? `${fmtCount(f.params)} <span class="sub">/ ${fmtCount(f.trainable)} trainable (${((100 * f.trainable) / f.params).toFixed(2)}%)</span>`
          : fmtCount(f.params)
    const extras = f.extras.length
      ? f.extras.map(([k, v]) => `<span class="kv"><span class="k">${esc(k)}</span> ${derivedMark(f, k, fmtExtra(k, v))}</span>`).join(" ")
      : DASH
    const notes = st.notes.length ? `<div class="stage-notes">${st.notes.map((n) => `<div>${esc(n)}</div>`).join("")}</div>` : ""
    return `<tr data-stage="${esc(f.name)}">
<td class="stage"><b>${esc(f.name)}</b>${notes}</td>
<td>${statusBadge(f.status)}</td>
<td class="num">${derivedMark(f, "steps", f.steps === undefined ? DASH : f.steps.toLocaleString("en-US"))}</td>
<td class="num">${derivedMark(f, "tokens", fmtCount(f.tokens))}</td>
<td class="num">${derivedMark(f, "elapsed", fmtDuration(f.elapsed))}</td>
<td class="num">${derivedMark(f, "tokensPerS", fmtCount(f.tokensPerS))}</td>
<td class="num loss">${derivedMark(f, "finalLoss", fmtLoss(f.finalLoss))}</td>
<td class="num loss">${derivedMark(f, "finalEvalLoss", fmtLoss(f.finalEvalLoss))}</td>
<td class="num">${params}</td>
<td class="extras">${extras}</td>
</tr>`
  })
  const sum = (xs: (number | undefined)[]) => (xs.some((x) => x !== undefined) ? xs.reduce<number>((a, x) => a + (x ?? 0), 0) : undefined)
  const tTokens = sum(figs.map((f) => f.tokens))
  const tTime = sum(figs.map((f) => f.elapsed))
  const total =
    figs.length > 1
      ? `<tfoot><tr><td><b>total</b></td><td></td><td class="num">${fmtCount(sum(figs.map((f) => f.steps)))}</td><td class="num">${fmtCount(tTokens)}</td><td class="num">${fmtDuration(tTime)}</td><td class="num">${tTokens !== undefined && tTime ? fmtCount(tTokens / tTime) : DASH}</td><td colspan="4"></td></tr></tfoot>`
      : ""
  const anyDerived = figs.some((f) => f.derived.size)
  return `<table class="stages">
<thead><tr><th>stage</th><th>status</th><th class="num">steps</th><th class="num">tokens</th><th class="num">time</th><th class="num">tokens/s</th><th class="num">final train loss</th><th class="num">final eval loss</th><th class="num">params</th><th>extras</th></tr></thead>
<tbody>${rows.join("\n")}</tbody>${total}
</table>${anyDerived ? `<p class="note">* not in the stage's summary.json; taken from the last rows of metrics.jsonl.</p>` : ""}`
}

const chartFigure = (c: Chart) =>
  `<figure class="chart${c.wide ? " wide" : ""}" id="chart-${esc(c.id)}"><figcaption>${esc(c.title)}</figcaption>${
    c.svg ?? `<div class="chart-error">chart could not be rendered: ${esc(c.error ?? "unknown error")}</div>`
  }${c.caption ? `<div class="note">${esc(c.caption)}</div>` : ""}</figure>`

const MAX_ANSWER = 1500
const clip = (s: string) => (s.length > MAX_ANSWER ? `${s.slice(0, MAX_ANSWER)}…` : s)

const samplesTable = (run: RunData): string => {
  const samples = run.eval?.samples
  if (!samples?.length) return ""
  const models = orderModels([...new Set(samples.flatMap((s) => Object.keys(s.model ?? {})))], run)
  const hasRef = samples.some((s) => s.answer !== undefined)
  const shown = samples.slice(0, 100)
  const cell = (s: string | undefined) => (s === undefined ? `<td>${DASH}</td>` : `<td><div class="text">${esc(clip(s))}</div></td>`)
  return `<h3>Sample answers</h3>
<div class="scroll"><table class="samples"><thead><tr><th>question</th>${hasRef ? "<th>reference</th>" : ""}${models.map((m) => `<th>${esc(m)}</th>`).join("")}</tr></thead>
<tbody>${shown.map((s) => `<tr>${cell(s.question)}${hasRef ? cell(s.answer) : ""}${models.map((m) => cell(s.model?.[m])).join("")}</tr>`).join("\n")}</tbody></table></div>${
    samples.length > shown.length ? `<p class="note">${samples.length - shown.length} more samples in eval/summary.json</p>` : ""
  }`
}

const heldoutTable = (run: RunData): string => {
  const h = run.eval?.heldout
  if (!h || !Object.keys(h).length) return ""
  const models = orderModels(Object.keys(h), run)
  const cols = [...new Set(["accuracy", "correct", "total", ...models.flatMap((m) => Object.keys(h[m]!))])].filter((c) => models.some((m) => h[m]![c] !== undefined))
  return `<table class="data"><thead><tr><th>model</th>${cols.map((c) => `<th class="num">${esc(c)}</th>`).join("")}</tr></thead><tbody>${models
    .map((m) => `<tr><th>${esc(m)}</th>${cols.map((c) => `<td class="num">${scalarCell(c, h[m]![c] as Json | undefined)}</td>`).join("")}</tr>`)
    .join("")}</tbody></table>`
}

const configSection = (run: RunData): string => {
  const parts: string[] = []
  if (run.config !== undefined) parts.push(`<details><summary>run.json · config</summary>${jsonBlock(run.config)}</details>`)
  else if (run.runJson) parts.push(`<details><summary>run.json</summary>${jsonBlock(run.runJson)}</details>`)
  for (const st of run.stages) {
    parts.push(
      st.config !== undefined
        ? `<details><summary>${esc(st.name)}/config.json</summary>${jsonBlock(st.config)}</details>`
        : `<details class="missing"><summary>${esc(st.name)}/config.json <span class="na">(missing)</span></summary></details>`,
    )
    if (st.summary) parts.push(`<details><summary>${esc(st.name)}/summary.json</summary>${jsonBlock(st.summary)}</details>`)
  }
  return parts.join("\n")
}

const CSS = `
:root{--fg:#1d232b;--muted:#6b7380;--line:#e3e6ea;--bg:#f6f7f9;--card:#fff;--accent:#4c78a8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:24px;margin:0 0 4px}h1 .tag{color:var(--muted);font-weight:400;font-size:15px;margin-left:6px}
h2{font-size:17px;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:18px 0 8px}h4{font-size:13px;margin:10px 0 6px;color:var(--muted)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 18px;margin:16px 0}
code,pre{font:12px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:12px 0 0}
.meta dt{color:var(--muted)}.meta dd{margin:0;word-break:break-word}
.meta code{background:var(--bg);padding:1px 5px;border-radius:4px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
thead th{font-weight:600;color:var(--muted);font-size:12px;white-space:nowrap;border-bottom:1.5px solid #cfd4da}
tfoot td{border-bottom:none;color:var(--muted)}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.loss{font-weight:600}
.sub{display:block;color:var(--muted);font-size:11px}
.na{color:#aab}
.derived{color:#7a5b12}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.badge.ok{background:#e3f4e6;color:#1f7a35}.badge.warn{background:#fff1d6;color:#8a5a00}.badge.bad{background:#fde2e1;color:#a4221b}.badge.muted{background:#eceef1;color:#5b6470}
.stage-notes{font-size:11px;color:#8a5a00;margin-top:3px}
.extras .kv{display:inline-block;margin:0 10px 2px 0;white-space:nowrap}.extras .k{color:var(--muted);font-size:12px}
.note{color:var(--muted);font-size:12px;margin:6px 0 0}
.notes li{color:#8a5a00}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:14px}
figure.chart{margin:0;padding:8px 10px;border:1px solid var(--line);border-radius:6px;overflow-x:auto}
figure.chart.wide{grid-column:1/-1}
figure.chart svg{display:block;max-width:100%;height:auto}
figcaption{font-weight:600;font-size:13px;margin-bottom:4px}
.chart-error{color:#a4221b;font-size:12px;padding:20px 0}
.eval-grid{display:grid;grid-template-columns:auto 1fr;gap:18px;align-items:start}
@media (max-width:900px){.eval-grid{grid-template-columns:1fr}.charts{grid-template-columns:1fr}}
table.data{width:auto;min-width:280px}table.data th{font-weight:600}
table.samples td{min-width:160px;max-width:340px}
.text{white-space:pre-wrap;word-break:break-word;max-height:260px;overflow:auto;font-size:13px}
.scroll{overflow-x:auto}
details{border:1px solid var(--line);border-radius:6px;margin:6px 0;background:#fbfbfc}
details>summary{cursor:pointer;padding:6px 10px;font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
details pre.json{margin:0;padding:10px 12px;border-top:1px solid var(--line);overflow:auto;max-height:520px;background:#fff}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:20px}
`

/** The report page for a loaded run (pure but for chart rendering; no file system access). */
export const renderRunReport = async (run: RunData): Promise<string> => {
  const figs = run.stages.map(stageFigures)
  const charts = await buildCharts(run)
  const m = run.machine
  const machine = [
    m.cpu ? esc(m.cpu) : undefined,
    m.cores !== undefined ? `${m.cores} cores` : undefined,
    m.memoryBytes !== undefined ? `${fmtBytes(m.memoryBytes)} RAM` : undefined,
    m.platform ? esc(m.platform) : undefined,
  ].filter(Boolean).join(" · ")
  const meta: [string, string][] = []
  if (run.created) meta.push(["created", esc(run.created)])
  if (run.command) meta.push(["command", `<code>${esc(run.command)}</code>`])
  meta.push([m.source === "run.json" ? "machine" : "machine (report host)", machine || DASH])
  meta.push(["bun", m.bun ? esc(m.bun) : DASH])
  meta.push(["git commit", m.gitCommit ? `<code>${esc(m.gitCommit)}</code>` : DASH])
  if (run.tokenizer) meta.push(["tokenizer", `${run.tokenizer.vocabSize !== undefined ? `vocabulary ${run.tokenizer.vocabSize.toLocaleString("en-US")} · ` : ""}${run.tokenizer.files.map(esc).join(", ") || "empty"}`])
  meta.push(["run directory", `<code>${esc(run.dir)}</code>`])
  meta.push(["report generated", esc(run.generated)])

  const allNotes = [...run.notes, ...run.stages.flatMap((s) => s.notes.filter((n) => /malformed|could not|not a JSON/.test(n)).map((n) => (n.includes(s.name) ? n : `${s.name}: ${n}`)))]

  const evalOther = run.eval ? Object.entries(run.eval.raw).filter(([k]) => k !== "heldout" && k !== "samples") : []
  const evalHtml = run.eval
    ? `<section id="eval"><h2>Evaluation</h2>
${run.eval.heldout ? `<h3>Held-out accuracy</h3><div class="eval-grid">${charts.eval.map(chartFigure).join("")}<div>${heldoutTable(run)}</div></div>` : ""}
${evalOther.map(([k, v]) => `<h3>${esc(k)}</h3>${renderGeneric(v)}`).join("\n")}
${samplesTable(run)}
</section>`
    : ""

  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="color-scheme" content="light">
<title>${esc(run.name)} · bunmind report</title>
<style>${CSS}</style></head>
<body><main>
<header><h1>${esc(run.name)}<span class="tag">bunmind run report</span></h1>
<dl class="meta">${meta.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join("")}</dl></header>
<section id="stages"><h2>Stages</h2>${stageTable(run, figs)}</section>
${allNotes.length ? `<section id="notes"><h2>Notes</h2><ul class="notes">${allNotes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul></section>` : ""}
${charts.training.length ? `<section id="training"><h2>Training curves</h2><div class="charts">${charts.training.map(chartFigure).join("\n")}</div></section>` : ""}
${evalHtml}
<section id="config"><h2>Configuration</h2>${configSection(run)}</section>
<footer>generated by bunmind · ${esc(run.generated)}</footer>
</main></body></html>
`
}

/** Reads `runDir`, writes `runDir/report.html` and returns its path. */
export const writeRunReport = async (runDir: string): Promise<string> => {
  const dir = resolve(runDir)
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${runDir}: not a run directory`)
  const html = await renderRunReport(loadRun(dir))
  const out = join(dir, "report.html")
  writeFileSync(out, html)
  return out
}
