/**
 * Charts for the run report: vega-lite specs compiled to vega and rendered to SVG strings
 * server-side (`renderer: "none"`, no canvas, no network: every spec carries its data inline).
 */
import { compile, type TopLevelSpec } from "vega-lite"
import * as vega from "vega"

/** Longest series drawn as-is; longer ones are downsampled (min/max per bucket) to this many points. */
export const MAX_POINTS = 2000

export const CHART_WIDTH = 400
export const CHART_HEIGHT = 200

const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"

/** Shared look: light grid, small labels, no chart border. */
const CONFIG = {
  font: FONT,
  background: "white",
  view: { stroke: null },
  axis: { labelFontSize: 11, titleFontSize: 11, titleFontWeight: 500, titleColor: "#444", labelColor: "#555", gridColor: "#eee", domainColor: "#bbb", tickColor: "#bbb" },
  legend: { labelFontSize: 11, titleFontSize: 11, orient: "top", title: null },
  line: { strokeWidth: 1.6 },
  range: { category: ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d", "#bab0ac", "#ff9da6"] },
}

/**
 * Keeps at most `max` points of a series by splitting it into buckets and keeping each bucket's
 * lowest and highest point (in order), so spikes and the overall envelope survive. The first and
 * last points are always kept. Series at or under `max` are returned unchanged.
 */
export const downsample = <T>(points: readonly T[], y: (p: T) => number, max: number = MAX_POINTS): T[] => {
  const n = points.length
  if (n <= max || max < 4) return points.slice()
  const buckets = Math.floor((max - 2) / 2)
  const out: T[] = [points[0]!]
  const inner = n - 2
  for (let b = 0; b < buckets; b++) {
    const lo = 1 + Math.floor((b * inner) / buckets)
    const hi = 1 + Math.floor(((b + 1) * inner) / buckets)
    if (hi <= lo) continue
    let iMin = lo
    let iMax = lo
    for (let i = lo; i < hi; i++) {
      const v = y(points[i]!)
      if (v < y(points[iMin]!)) iMin = i
      if (v > y(points[iMax]!)) iMax = i
    }
    if (iMin === iMax) out.push(points[iMin]!)
    else if (iMin < iMax) out.push(points[iMin]!, points[iMax]!)
    else out.push(points[iMax]!, points[iMin]!)
  }
  out.push(points[n - 1]!)
  return out
}

let chartSeq = 0

/** Compiles a vega-lite spec and renders it to a standalone SVG string. */
export const renderSvg = async (spec: Record<string, unknown>): Promise<string> => {
  const full = { ...spec, config: { ...CONFIG, ...((spec.config as object) ?? {}) } } as TopLevelSpec
  const compiled = compile(full).spec
  const view = new vega.View(vega.parse(compiled), { renderer: "none" })
  try {
    const svg = await view.toSVG()
    // Several SVGs share one page: make clip-path / gradient ids unique per chart.
    const prefix = `c${++chartSeq}-`
    return svg.replace(/\bid="([^"]+)"/g, `id="${prefix}$1"`).replace(/url\(#([^)]+)\)/g, `url(#${prefix}$1)`)
  } finally {
    view.finalize()
  }
}

type Pt = { step: number; value: number; series: string }

/** Train loss (line) and eval loss (line with points) of one stage against step. */
export const lossSpec = (train: Pt[], evalPts: Pt[]): Record<string, unknown> => {
  const values = [...downsample(train, (p) => p.value), ...downsample(evalPts, (p) => p.value)]
  const domain = [...(train.length ? ["train loss"] : []), ...(evalPts.length ? ["eval loss"] : [])]
  const color = { field: "series", type: "nominal", scale: { domain, range: ["#4c78a8", "#e45756"].slice(train.length ? 0 : 1) } }
  const x = { field: "step", type: "quantitative", title: "step" }
  const y = { field: "value", type: "quantitative", title: "loss", scale: { zero: false } }
  const layer: unknown[] = []
  if (train.length) layer.push({ transform: [{ filter: "datum.series === 'train loss'" }], mark: { type: "line", clip: true }, encoding: { x, y, color } })
  if (evalPts.length) {
    layer.push({
      transform: [{ filter: "datum.series === 'eval loss'" }],
      mark: { type: "line", point: { size: 28, filled: true }, strokeWidth: 2, clip: true },
      encoding: { x, y, color },
    })
  }
  return { width: CHART_WIDTH, height: CHART_HEIGHT, data: { values }, layer }
}

/** One y-field against step, one coloured line per stage. */
export const perStageSpec = (
  rows: { step: number; value: number; stage: string }[],
  stages: string[],
  opts: { title: string; format?: string; log?: boolean; xTitle?: string },
): Record<string, unknown> => {
  const values = stages.flatMap((s) => downsample(rows.filter((r) => r.stage === s), (r) => r.value))
  return {
    width: CHART_WIDTH,
    height: CHART_HEIGHT,
    data: { values },
    mark: { type: "line", clip: true },
    encoding: {
      x: { field: "step", type: "quantitative", title: opts.xTitle ?? "step" },
      y: {
        field: "value",
        type: "quantitative",
        title: opts.title,
        axis: opts.format ? { format: opts.format } : {},
        scale: opts.log ? { type: "log" } : { zero: false },
      },
      color: { field: "stage", type: "nominal", scale: { domain: stages } },
    },
  }
}

/** Several metrics of one stage, one small chart each (e.g. DPO accuracy, reward margin, KL). */
export const multiMetricSpec = (rows: { step: number; value: number; metric: string }[], metrics: string[]): Record<string, unknown> => ({
  data: { values: metrics.flatMap((m) => downsample(rows.filter((r) => r.metric === m), (r) => r.value)) },
  facet: { field: "metric", type: "nominal", title: null, sort: metrics, header: { labelFontSize: 12, labelFontWeight: 600 } },
  columns: 3,
  spec: {
    width: Math.floor((CHART_WIDTH * 2 - 120) / 3),
    height: 170,
    mark: { type: "line", clip: true, color: "#b279a2" },
    encoding: {
      x: { field: "step", type: "quantitative", title: "step" },
      y: { field: "value", type: "quantitative", title: null, scale: { zero: false } },
    },
  },
  resolve: { scale: { y: "independent" } },
})

/** Held-out accuracy per model as bars with percentage labels. */
export const accuracySpec = (rows: { model: string; accuracy: number; label: string }[]): Record<string, unknown> => {
  const x = { field: "model", type: "nominal", title: null, sort: rows.map((r) => r.model), axis: { labelAngle: 0, labelFontSize: 12 } }
  const y = { field: "accuracy", type: "quantitative", title: "held-out accuracy", scale: { domain: [0, 1] }, axis: { format: "%" } }
  return {
    width: Math.max(180, Math.min(CHART_WIDTH, rows.length * 90)),
    height: CHART_HEIGHT,
    data: { values: rows },
    layer: [
      { mark: { type: "bar", cornerRadiusTopLeft: 3, cornerRadiusTopRight: 3, width: { band: 0.6 } }, encoding: { x, y, color: { field: "model", type: "nominal", legend: null, scale: { domain: rows.map((r) => r.model) } } } },
      { mark: { type: "text", dy: -7, fontSize: 11, color: "#333" }, encoding: { x, y, text: { field: "label" } } },
    ],
  }
}
