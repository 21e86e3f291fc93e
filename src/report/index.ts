/** Run reports: `runs/<name>/report.html` (see report.ts). */
export {
  buildCharts,
  fmtCount,
  fmtDuration,
  fmtLoss,
  renderRunReport,
  stageFigures,
  writeRunReport,
  type Chart,
  type StageFigures,
} from "./report.ts"
export { CANONICAL_STAGES, hostMachine, loadRun, parseMetrics } from "./load.ts"
export type { EvalData, MachineInfo, MetricRow, RunData, StageData } from "./load.ts"
export { downsample, MAX_POINTS, renderSvg } from "./charts.ts"
