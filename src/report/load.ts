/**
 * Reads a training run directory (`runs/<name>/`) into plain data for the report. Never throws on
 * missing or malformed files: whatever cannot be read becomes a note in `RunData.notes` or the
 * stage's `notes`, and the report renders what exists.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs"
import { cpus, platform, arch, release, totalmem } from "node:os"
import { basename, join, resolve } from "node:path"

/** Pipeline order used when run.json does not list the stages. */
export const CANONICAL_STAGES = ["pretrain", "sft", "lora", "dpo", "distill"] as const

/** Directories of a run that are never stages. */
const NOT_STAGES = new Set(["tokenizer", "eval", "model", "logs", "checkpoints"])

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json }
export type JsonObject = { [k: string]: Json }

/** One metrics.jsonl line, loosely typed: every numeric field is kept. */
export interface MetricRow {
  readonly step: number
  readonly [k: string]: number
}

export interface StageData {
  readonly name: string
  /** False when run.json lists the stage but its directory does not exist. */
  readonly exists: boolean
  readonly config?: Json
  readonly summary?: JsonObject
  /** Every well-formed metrics row (train and eval rows alike), in file order. */
  readonly metrics: MetricRow[]
  readonly malformedLines: number
  readonly hasMetricsFile: boolean
  readonly notes: string[]
}

export interface MachineInfo {
  readonly cpu?: string
  readonly cores?: number
  readonly memoryBytes?: number
  readonly platform?: string
  readonly bun?: string
  readonly gitCommit?: string
  /** Where these figures come from: the run itself (run.json) or the machine that wrote the report. */
  readonly source: "run.json" | "report host"
}

export interface EvalData {
  readonly heldout?: Record<string, { accuracy?: number; correct?: number; total?: number; [k: string]: Json | undefined }>
  readonly samples?: { question?: string; answer?: string; model?: Record<string, string> }[]
  /** The whole parsed eval/summary.json, for generic rendering of other keys. */
  readonly raw: JsonObject
}

export interface RunData {
  readonly dir: string
  readonly name: string
  readonly created?: string
  readonly command?: string
  readonly config?: Json
  readonly runJson?: JsonObject
  readonly stages: StageData[]
  readonly eval?: EvalData
  readonly tokenizer?: { vocabSize?: number; files: string[] }
  readonly machine: MachineInfo
  /** When the report was generated (ISO string). */
  readonly generated: string
  readonly notes: string[]
}

const isObject = (v: unknown): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v)

/** Reads and parses a JSON file; `undefined` when absent, a note when unreadable. */
const readJson = (path: string, notes: string[], label: string): Json | undefined => {
  if (!existsSync(path)) return undefined
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Json
  } catch (e) {
    notes.push(`${label}: could not be parsed (${(e as Error).message.split("\n")[0]})`)
    return undefined
  }
}

/**
 * Parses metrics.jsonl text. Blank lines are ignored; a line that is not a JSON object with a
 * finite numeric `step` counts as malformed (a half-written last line of an interrupted stage, say).
 * Non-numeric fields are dropped; numbers that are not finite are dropped.
 */
export const parseMetrics = (text: string): { rows: MetricRow[]; malformed: number } => {
  const rows: MetricRow[] = []
  let malformed = 0
  for (const line of text.split("\n")) {
    const s = line.trim()
    if (s === "") continue
    let v: unknown
    try {
      v = JSON.parse(s)
    } catch {
      malformed++
      continue
    }
    if (!isObject(v) || typeof v.step !== "number" || !Number.isFinite(v.step)) {
      malformed++
      continue
    }
    const row: Record<string, number> = {}
    for (const [k, x] of Object.entries(v)) if (typeof x === "number" && Number.isFinite(x)) row[k] = x
    rows.push(row as MetricRow)
  }
  return { rows, malformed }
}

const loadStage = (runDir: string, name: string): StageData => {
  const dir = join(runDir, name)
  const notes: string[] = []
  if (!existsSync(dir)) {
    return { name, exists: false, metrics: [], malformedLines: 0, hasMetricsFile: false, notes: ["not started (no stage directory)"] }
  }
  const config = readJson(join(dir, "config.json"), notes, `${name}/config.json`)
  const summaryRaw = readJson(join(dir, "summary.json"), notes, `${name}/summary.json`)
  let summary: JsonObject | undefined
  if (summaryRaw !== undefined && !isObject(summaryRaw)) notes.push(`${name}/summary.json: not a JSON object`)
  else summary = summaryRaw
  const metricsPath = join(dir, "metrics.jsonl")
  let metrics: MetricRow[] = []
  let malformed = 0
  const hasMetricsFile = existsSync(metricsPath)
  if (hasMetricsFile) {
    try {
      const r = parseMetrics(readFileSync(metricsPath, "utf8"))
      metrics = r.rows
      malformed = r.malformed
    } catch (e) {
      notes.push(`${name}/metrics.jsonl: could not be read (${(e as Error).message})`)
    }
  }
  if (malformed > 0) notes.push(`${malformed} malformed line${malformed === 1 ? "" : "s"} skipped in ${name}/metrics.jsonl`)
  if (config === undefined && !notes.some((n) => n.startsWith(`${name}/config.json`))) notes.push(`no config.json`)
  if (!summary && summaryRaw === undefined) notes.push(`no summary.json (figures derived from metrics.jsonl)`)
  if (!hasMetricsFile) notes.push(`no metrics.jsonl`)
  else if (metrics.length === 0) notes.push(`metrics.jsonl has no usable rows`)
  return { name, exists: true, config, summary, metrics, malformedLines: malformed, hasMetricsFile, notes }
}

/** The stage names, in run.json's order when it has one, then any other stage directories. */
const stageNames = (runDir: string, runJson: JsonObject | undefined): string[] => {
  const onDisk: string[] = []
  try {
    for (const e of readdirSync(runDir, { withFileTypes: true })) {
      if (!e.isDirectory() || e.name.startsWith(".") || NOT_STAGES.has(e.name)) continue
      const d = join(runDir, e.name)
      if (["config.json", "metrics.jsonl", "summary.json"].some((f) => existsSync(join(d, f)))) onDisk.push(e.name)
    }
  } catch {
    // unreadable run directory: no stages
  }
  const listed: string[] = []
  const declared = runJson?.stages ?? (isObject(runJson?.config) ? runJson.config.stages : undefined)
  if (Array.isArray(declared)) {
    for (const s of declared) {
      const n = typeof s === "string" ? s : isObject(s) && typeof s.name === "string" ? s.name : isObject(s) && typeof s.stage === "string" ? s.stage : undefined
      if (n && !listed.includes(n) && !NOT_STAGES.has(n)) listed.push(n)
    }
  }
  const rank = (n: string) => {
    const i = (CANONICAL_STAGES as readonly string[]).indexOf(n)
    return i < 0 ? CANONICAL_STAGES.length : i
  }
  const rest = onDisk.filter((n) => !listed.includes(n)).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
  return [...listed, ...rest]
}

const gitCommit = (cwd: string): string | undefined => {
  try {
    const r = Bun.spawnSync(["git", "rev-parse", "--short", "HEAD"], { cwd, stdout: "pipe", stderr: "ignore" })
    const s = r.stdout.toString().trim()
    return r.exitCode === 0 && s ? s : undefined
  } catch {
    return undefined
  }
}

/** CPU, cores, memory, Bun and git commit of this machine. */
export const hostMachine = (cwd: string = process.cwd()): MachineInfo => {
  const c = cpus()
  return {
    cpu: c[0]?.model?.trim() || undefined,
    cores: c.length || undefined,
    memoryBytes: totalmem(),
    platform: `${platform()} ${release()} ${arch()}`,
    bun: typeof Bun !== "undefined" ? Bun.version : process.versions.bun,
    gitCommit: gitCommit(cwd) ?? (cwd !== process.cwd() ? gitCommit(process.cwd()) : undefined),
    source: "report host",
  }
}

/** run.json may record the training machine (`machine`/`host`/`system`); else this host's figures. */
const machineFrom = (runJson: JsonObject | undefined, runDir: string): MachineInfo => {
  const host = hostMachine(existsSync(runDir) ? runDir : process.cwd())
  const m = runJson && [runJson.machine, runJson.host, runJson.system].find(isObject)
  const git = typeof runJson?.git === "string" ? runJson.git : typeof runJson?.git_commit === "string" ? runJson.git_commit : undefined
  if (!m) return git ? { ...host, gitCommit: git } : host
  const str = (...ks: string[]) => ks.map((k) => m[k]).find((v): v is string => typeof v === "string")
  const num = (...ks: string[]) => ks.map((k) => m[k]).find((v): v is number => typeof v === "number")
  return {
    cpu: str("cpu", "cpu_model"),
    cores: num("cores", "cpu_cores", "cpus"),
    memoryBytes: num("memory", "memory_bytes", "mem_bytes", "total_memory"),
    platform: str("platform", "os"),
    bun: str("bun", "bun_version"),
    gitCommit: git ?? str("git", "git_commit", "commit") ?? host.gitCommit,
    source: "run.json",
  }
}

const tokenizerInfo = (runDir: string, notes: string[]): RunData["tokenizer"] => {
  const dir = join(runDir, "tokenizer")
  if (!existsSync(dir)) return undefined
  let files: string[] = []
  try {
    files = readdirSync(dir).sort()
  } catch {
    return undefined
  }
  let vocabSize: number | undefined
  const tj = join(dir, "tokenizer.json")
  try {
    if (existsSync(tj) && statSync(tj).size < 256 * 1024 * 1024) {
      const t = JSON.parse(readFileSync(tj, "utf8")) as { model?: { vocab?: Record<string, number> | unknown[] }; added_tokens?: { id: number }[] }
      const v = t.model?.vocab
      const ids = Array.isArray(v) ? v.map((_, i) => i) : isObject(v) ? Object.values(v).filter((x): x is number => typeof x === "number") : []
      for (const a of t.added_tokens ?? []) if (typeof a?.id === "number") ids.push(a.id)
      if (ids.length) vocabSize = Math.max(...ids) + 1
    }
  } catch (e) {
    notes.push(`tokenizer/tokenizer.json: could not be parsed (${(e as Error).message.split("\n")[0]})`)
  }
  return { vocabSize, files }
}

const loadEval = (runDir: string, notes: string[]): EvalData | undefined => {
  const raw = readJson(join(runDir, "eval", "summary.json"), notes, "eval/summary.json")
  if (raw === undefined) return undefined
  if (!isObject(raw)) {
    notes.push("eval/summary.json: not a JSON object")
    return undefined
  }
  let heldout: EvalData["heldout"]
  if (isObject(raw.heldout)) {
    heldout = {}
    for (const [model, v] of Object.entries(raw.heldout)) {
      if (isObject(v)) heldout[model] = v as never
      else if (typeof v === "number") heldout[model] = { accuracy: v }
    }
  }
  let samples: EvalData["samples"]
  if (Array.isArray(raw.samples)) {
    samples = raw.samples.filter(isObject).map((s) => ({
      question: typeof s.question === "string" ? s.question : s.question === undefined ? undefined : JSON.stringify(s.question),
      answer: typeof s.answer === "string" ? s.answer : s.answer === undefined ? undefined : JSON.stringify(s.answer),
      model: isObject(s.model)
        ? Object.fromEntries(Object.entries(s.model).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]))
        : undefined,
    }))
  }
  return { heldout, samples, raw }
}

/** Reads everything the report needs from a run directory. */
export const loadRun = (runDir: string): RunData => {
  const dir = resolve(runDir)
  const notes: string[] = []
  if (!existsSync(dir)) notes.push(`run directory ${dir} does not exist`)
  const rj = readJson(join(dir, "run.json"), notes, "run.json")
  const runJson = isObject(rj) ? rj : undefined
  if (rj === undefined && existsSync(dir) && !notes.some((n) => n.startsWith("run.json"))) notes.push("no run.json")
  const stages = stageNames(dir, runJson).map((n) => loadStage(dir, n))
  return {
    dir,
    name: typeof runJson?.name === "string" ? runJson.name : basename(dir),
    created: typeof runJson?.created === "string" ? runJson.created : typeof runJson?.created === "number" ? new Date(runJson.created).toISOString() : undefined,
    command: typeof runJson?.command === "string" ? runJson.command : Array.isArray(runJson?.command) ? runJson.command.join(" ") : undefined,
    config: runJson?.config,
    runJson,
    stages,
    eval: loadEval(dir, notes),
    tokenizer: tokenizerInfo(dir, notes),
    machine: machineFrom(runJson, dir),
    generated: new Date().toISOString(),
    notes,
  }
}
