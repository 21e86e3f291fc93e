/**
 * Training: `runStage(options)` runs one stage (stages.ts) to completion or interruption.
 *
 *   stages.ts   the five stages: data kind, objective, defaults, start point, publish rule
 *   options.ts  StageOptions, resolveStageOptions (defaults + checks; the CLI and pipelines)
 *   run.ts      the loop (data.ts, eval.ts, publish.ts, schedule.ts)
 *   launch.ts   `--nproc N`: rank processes (rank-main.ts), distributed.ts for the row split
 *   record.ts   <run>/run.json
 */
import { launchStage } from "./launch.ts"
import type { StageOptions } from "./options.ts"
import { runStageHere } from "./run.ts"

export { splitIndices, stepBatch } from "./data.ts"
export { rankMicroBatches, rankSplitProblem } from "./distributed.ts"
export { checkStageSettings, resolveStageOptions, SettingError, StageError } from "./options.ts"
export type { MetricLine, RankOptions, StageName, StageOptions, StageSettings, StageSummary } from "./options.ts"
export { recordRun, type RunRecord } from "./record.ts"
export { prepareStage, runStageHere } from "./run.ts"
export { cosineLr } from "./schedule.ts"
export { LORA_DEFAULTS, OBJECTIVE_DEFAULTS, RUN_DEFAULTS, STAGE_DEFAULTS, STAGE_INIT, STAGE_NAMES, STAGES } from "./stages.ts"

/**
 * Runs one stage to completion (or interruption); returns its summary. With `parallel.nproc > 1`
 * it starts that many rank processes (launch.ts) and returns rank 0's summary.
 */
export const runStage = (o: StageOptions) => (o.parallel && o.parallel.nproc > 1 && !o.dist ? launchStage(o) : runStageHere(o))
