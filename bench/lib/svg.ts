/**
 * A small dependency-free SVG chart per suite: one horizontal bar per row, labelled.
 *  - Rows with a ratio to their baseline are drawn as that ratio (> 1× = better than the baseline),
 *    on a log scale when the ratios span more than 20×, with a line at 1×.
 *  - A suite without ratios is drawn as values, one linear scale per unit.
 *  - Rows whose correctness check failed are drawn without a bar, labelled WRONG.
 */
import type { Row } from "./report.ts"

type ChartRow = Row & { check?: string }

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")
const fmt = (v: number) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3))
const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s)

export function suiteSvg(suite: string, rows: ChartRow[], subtitle = ""): string {
  const withRatio = rows.filter((r) => r.ratio !== undefined && Number.isFinite(r.ratio) && r.ratio > 0)
  const wrong = rows.filter((r) => r.check === "WRONG")
  const useRatio = withRatio.length > 0
  const bars = useRatio ? [...withRatio, ...wrong] : rows.filter((r) => r.check !== "WRONG").concat(wrong)
  const labelW = 560
  const barW = 360
  const rowH = 20
  const top = 52
  const width = labelW + barW + 190
  const height = top + bars.length * rowH + 34

  // Scales.
  const ratios = withRatio.map((r) => r.ratio!)
  const lo = Math.min(1, ...ratios)
  const hi = Math.max(1, ...ratios)
  const log = useRatio && hi / lo > 20
  const ratioX = (v: number) => (log ? ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo) || 1)) * barW : (v / (hi || 1)) * barW)
  const maxByUnit = new Map<string, number>()
  for (const r of rows) maxByUnit.set(r.unit, Math.max(maxByUnit.get(r.unit) ?? 0, r.value))
  const valueX = (r: Row) => (r.value / (maxByUnit.get(r.unit) || 1)) * barW

  const parts: string[] = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="11">`)
  parts.push(`<rect width="100%" height="100%" fill="white"/>`)
  parts.push(`<text x="8" y="18" font-size="14" font-weight="bold">${esc(`bunmind bench — ${suite}`)}</text>`)
  const scaleNote = useRatio
    ? `bar = ratio to the row's baseline (> 1× is better)${log ? ", log scale" : ""}; line at 1×`
    : "bar = value, one linear scale per unit"
  parts.push(`<text x="8" y="34" fill="#555">${esc(scaleNote + (subtitle ? ` — ${subtitle}` : ""))}</text>`)
  bars.forEach((r, i) => {
    const y = top + i * rowH
    const label = `${clip(r.name, 62)} · ${clip(r.backend, 30)}`
    parts.push(`<text x="${labelW - 6}" y="${y + 13}" text-anchor="end">${esc(label)}</text>`)
    if (r.check === "WRONG") {
      parts.push(`<text x="${labelW + 4}" y="${y + 13}" fill="#c00" font-weight="bold">WRONG (max rel. error ${esc(fmt(r.value))}) — not timed</text>`)
      return
    }
    // Log scale: bars grow from the 1× line (left when worse than the baseline, right when better).
    const origin = log ? ratioX(1) : 0
    const end = useRatio ? ratioX(r.ratio!) : valueX(r)
    const x0 = Math.min(origin, end)
    const w = Math.max(1, Math.abs(end - origin))
    const good = !useRatio || r.ratio! >= 1
    parts.push(`<rect x="${(labelW + x0).toFixed(1)}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${good ? "#3a7bd5" : "#e08a3c"}"/>`)
    const text = useRatio ? `${r.ratio!.toFixed(2)}× (${fmt(r.value)} ${r.unit})` : `${fmt(r.value)} ${r.unit}`
    parts.push(`<text x="${(labelW + Math.max(origin, end) + 4).toFixed(1)}" y="${y + 13}">${esc(text)}</text>`)
  })
  if (useRatio) {
    const x = labelW + ratioX(1)
    parts.push(`<line x1="${x.toFixed(1)}" y1="${top - 4}" x2="${x.toFixed(1)}" y2="${top + bars.length * rowH}" stroke="#333" stroke-dasharray="3,2"/>`)
    parts.push(`<text x="${x.toFixed(1)}" y="${top + bars.length * rowH + 14}" text-anchor="middle" fill="#333">1×</text>`)
  }
  parts.push(`</svg>`)
  return parts.join("\n") + "\n"
}
