/**
 * `<run>/run.json`: what ran in a run directory, written atomically by `bunmind train <stage>` and
 * by `bunmind pipeline run` alike. One shape:
 *
 *   { "name": "<run dir name>", "created": ISO time of the first write, "command": "bunmind ...",
 *     "stages": ["pretrain", "sft", ...]  (order; a stage trained alone is appended),
 *     "config": { "<stage>": its StageOptions, ... },
 *     "pipeline": the pipeline config (pipeline runs only) }
 */
import { existsSync, mkdirSync, readFileSync } from "node:fs"
import { basename, join } from "node:path"
import { writeJsonAtomic } from "../util/fs.ts"

export interface RunRecord {
  name: string
  created: string
  command: string
  stages: string[]
  config: Record<string, unknown>
  pipeline?: unknown
}

const readRecord = (file: string): Partial<RunRecord> => {
  try {
    const v = JSON.parse(readFileSync(file, "utf8"))
    return v && typeof v === "object" ? v : {}
  } catch {
    return {}
  }
}

/**
 * Updates `<runDir>/run.json`: `stages` replaces the stage order (a pipeline's list), `stage`
 * appends one stage (if new) and records its options, `pipeline` records a pipeline's config.
 */
export function recordRun(runDir: string, update: { stages?: readonly string[]; stage?: { name: string; options: unknown }; pipeline?: unknown }): RunRecord {
  mkdirSync(runDir, { recursive: true })
  const file = join(runDir, "run.json")
  const prev = existsSync(file) ? readRecord(file) : {}
  const stages = update.stages ? [...update.stages] : Array.isArray(prev.stages) ? prev.stages.filter((s): s is string => typeof s === "string") : []
  if (update.stage && !stages.includes(update.stage.name)) stages.push(update.stage.name)
  const config = prev.config && typeof prev.config === "object" && !Array.isArray(prev.config) && !("stages" in prev.config) ? { ...prev.config } : {}
  if (update.stage) config[update.stage.name] = update.stage.options
  const pipeline = update.pipeline ?? prev.pipeline
  const record: RunRecord = {
    name: typeof prev.name === "string" ? prev.name : basename(runDir),
    created: typeof prev.created === "string" ? prev.created : new Date().toISOString(),
    command: `bunmind ${process.argv.slice(2).join(" ")}`,
    stages,
    config,
    ...(pipeline !== undefined ? { pipeline } : {}),
  }
  writeJsonAtomic(file, record)
  return record
}
