/**
 * A pipeline is a list of stages in one config file, run in order into one run directory:
 *
 *   { "run": "runs/mini", "tokenizer": { "data": [...], "vocab_size": 6400 },
 *     "stages": [ { "stage": "pretrain", "data": [...], "preset": "minimind2-small", "steps": 2000 },
 *                 { "stage": "sft", "data": [...] }, { "stage": "dpo", "data": [...] } ] }
 *
 * A stage whose `summary.json` says done for the same config is skipped; an interrupted one is
 * resumed from its checkpoint. Each stage starts from the previous stage's published model unless
 * it names `init` (a model directory) or `preset` (from scratch).
 */
import { createHash } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { dirname, isAbsolute, join, resolve } from "node:path"
import { Data, Effect } from "effect"
import { ProgressBar, fmtBytes } from "../util/progress.ts"
import { tokenizerVocabSize } from "../tokenizer/tokenizer.ts"
import { trainTokenizer } from "../tokenizer/train.ts"
import { checkStageSettings, recordRun, resolveStageOptions, RUN_DEFAULTS, runStage, SettingError, STAGE_NAMES, type StageName, type StageOptions, type StageSettings, type StageSummary } from "../train/index.ts"
import { parseDeviceName, type Device } from "../native/library.ts"

export class PipelineError extends Data.TaggedError("PipelineError")<{ readonly message: string }> {}

export interface PipelineStage {
  stage: StageName
  data: string[]
  preset?: string
  init?: string
  overrides?: Record<string, unknown>
  epochs?: number
  steps?: number
  batchSize?: number
  accum?: number
  lr?: number
  seqLen?: number
  warmup?: number
  weightDecay?: number
  /** Weight decay on norm gains too (upstream). */
  decayNorms?: boolean
  /** "token" (default) or "micro" (upstream's mean of micro-batch means). */
  accumMean?: "token" | "micro"
  /** Leave out each epoch's short last batch. */
  dropLast?: boolean
  gradClip?: number
  evalEvery?: number
  evalBatches?: number
  evalFraction?: number
  saveEvery?: number
  beta?: number
  alpha?: number
  temperature?: number
  teacher?: string
  reference?: string
  lora?: { r: number; lora_alpha?: number; lora_dropout?: number; target_modules?: string[] }
  randomSystemPrompt?: number
  stripEmptyThink?: number
  pack?: boolean
  /** SFT/DPO: drop samples with no assistant token within seqLen (default false: kept, as upstream). */
  skipUnlabeled?: boolean
}

export interface PipelineConfig {
  run: string
  seed?: number
  device?: Device
  /** Data-parallel processes (one per GPU); see `src/train/distributed.ts`. */
  nproc?: number
  /** How the ranks sum gradients: "nccl" (GPUs, default) or "tcp" (CPU sockets, for testing). */
  distBackend?: "nccl" | "tcp"
  /** Training forward precision (default auto: bf16 autocast on CUDA, f32 on the CPU). */
  precision?: "auto" | "bf16" | "f32"
  tokenizer?: { data: string[]; vocab_size?: number; min_frequency?: number; scheme?: string } | { path: string }
  stages: PipelineStage[]
}

const hash = (v: unknown) => createHash("sha256").update(JSON.stringify(v)).digest("hex").slice(0, 16)

/**
 * A stage's identity in `pipeline-stage.json`: a finished stage with the same hash is skipped. It
 * hashes the resolved options (key order included), less what does not change the result: resume,
 * quiet, and the number of ranks (a run resumes on any count).
 */
export const stageHash = (o: StageOptions): string => hash({ ...o, resume: undefined, quiet: undefined, parallel: undefined })

/** A pipeline entry (and its config's run-wide keys) as the settings resolveStageOptions reads. */
const settingsOf = (cfg: PipelineConfig, s: PipelineStage): Omit<StageSettings, "data" | "tokenizer" | "init"> => ({
  seqLen: s.seqLen,
  batchSize: s.batchSize,
  accum: s.accum,
  epochs: s.epochs,
  steps: s.steps,
  lr: s.lr,
  warmup: s.warmup,
  weightDecay: s.weightDecay,
  decayNorms: s.decayNorms,
  accumMean: s.accumMean,
  dropLast: s.dropLast,
  gradClip: s.gradClip,
  seed: cfg.seed,
  evalEvery: s.evalEvery,
  evalBatches: s.evalBatches,
  evalFraction: s.evalFraction,
  saveEvery: s.saveEvery,
  skipUnlabeled: s.skipUnlabeled,
  beta: s.beta,
  alpha: s.alpha,
  temperature: s.temperature,
  teacher: s.teacher,
  reference: s.reference,
  lora: s.lora,
  systemPromptP: s.randomSystemPrompt,
  stripEmptyThinkP: s.stripEmptyThink,
  pack: s.pack,
  device: cfg.device,
  precision: cfg.precision,
  nproc: cfg.nproc,
  distBackend: cfg.distBackend,
})

/** Settings a pipeline config gives once for every stage. */
const RUN_WIDE = new Set(["seed", "device", "precision", "nproc", "distBackend"])

/** The pipeline key of a StageSettings field. */
const keyOf = (field: string): string => (field === "systemPromptP" ? "randomSystemPrompt" : field === "stripEmptyThinkP" ? "stripEmptyThink" : field)

/** Validates a parsed config; errors name the field (e.g. `stages[1].stage`). */
export function checkConfig(raw: unknown, file = "pipeline config"): PipelineConfig {
  const fail = (field: string, msg: string): never => {
    throw new PipelineError({ message: `${file}: ${field}: ${msg}` })
  }
  if (!raw || typeof raw !== "object") fail("(root)", "expected a JSON object")
  const c = raw as Record<string, unknown>
  if (typeof c.run !== "string" || !c.run) fail("run", "expected the run directory (a string)")
  if (!Array.isArray(c.stages) || c.stages.length === 0) fail("stages", "expected a non-empty list of stages")
  if (c.device !== undefined && (typeof c.device !== "string" || !parseDeviceName(c.device))) fail("device", `expected cpu, cuda or cuda:N, got ${JSON.stringify(c.device)}`)
  ;(c.stages as unknown[]).forEach((s, i) => {
    if (!s || typeof s !== "object") fail(`stages[${i}]`, "expected an object")
    const st = s as Record<string, unknown>
    if (!STAGE_NAMES.includes(st.stage as StageName)) fail(`stages[${i}].stage`, `expected one of ${STAGE_NAMES.join(", ")}, got ${JSON.stringify(st.stage)}`)
    if (!Array.isArray(st.data) || st.data.length === 0 || !st.data.every((d) => typeof d === "string"))
      fail(`stages[${i}].data`, "expected a non-empty list of files")
    // Every value check (the CLI makes the same ones), before any stage runs.
    const bad = checkStageSettings(settingsOf(c as unknown as PipelineConfig, st as unknown as PipelineStage))
    if (bad) fail(RUN_WIDE.has(bad.field) ? bad.field : `stages[${i}].${keyOf(bad.field)}`, bad.message)
  })
  return c as unknown as PipelineConfig
}

export function readConfig(file: string): PipelineConfig {
  let raw: unknown
  try {
    raw = JSON.parse(readFileSync(file, "utf8"))
  } catch (e) {
    throw new PipelineError({ message: `${file}: ${(e as Error).message}` })
  }
  const cfg = checkConfig(raw, file)
  // Relative paths are relative to the config file.
  const base = dirname(resolve(file))
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(base, p))
  cfg.run = abs(cfg.run)
  if (cfg.tokenizer && "data" in cfg.tokenizer) cfg.tokenizer.data = cfg.tokenizer.data.map(abs)
  if (cfg.tokenizer && "path" in cfg.tokenizer) cfg.tokenizer.path = abs(cfg.tokenizer.path)
  for (const s of cfg.stages) {
    s.data = s.data.map(abs)
    if (s.init) s.init = abs(s.init)
    if (s.teacher) s.teacher = abs(s.teacher)
    if (s.reference) s.reference = abs(s.reference)
  }
  return cfg
}

/** Stage options for one pipeline entry (resolveStageOptions: the CLI's defaults and checks). */
export function stageOptionsFor(cfg: PipelineConfig, s: PipelineStage, previous: string | undefined, tokenizer: string, vocab: number): StageOptions {
  const init: StageOptions["init"] = s.init
    ? { model: s.init }
    : s.preset || !previous
      ? { preset: s.preset ?? RUN_DEFAULTS.preset, overrides: { vocab_size: vocab, ...(s.overrides ?? {}) } }
      : { model: join(cfg.run, previous, "model") }
  return resolveStageOptions(s.stage, cfg.run, { ...settingsOf(cfg, s), data: s.data, tokenizer, init, resume: true, onBadRecord: "skip" })
}

export interface PipelineResult {
  run: string
  stages: { stage: StageName; skipped: boolean; summary: StageSummary }[]
}

/** Runs (or resumes) every stage in order; completed stages with an unchanged config are skipped. */
export const runPipeline = (cfg: PipelineConfig, opts: { quiet?: boolean } = {}) =>
  Effect.gen(function* () {
    recordRun(cfg.run, { stages: cfg.stages.map((s) => s.stage), pipeline: cfg })

    // Tokenizer: trained into the run (once), or an existing one.
    let tokenizer: string
    let vocab: number
    if (cfg.tokenizer && "path" in cfg.tokenizer) {
      tokenizer = cfg.tokenizer.path
      vocab = tokenizerVocabSize(tokenizer)
    } else {
      tokenizer = join(cfg.run, "tokenizer")
      const spec = cfg.tokenizer ?? { data: cfg.stages[0]!.data }
      const stamp = join(tokenizer, "bunmind-train.json")
      const want = hash(spec)
      if (existsSync(stamp) && JSON.parse(readFileSync(stamp, "utf8")).hash === want) {
        vocab = tokenizerVocabSize(tokenizer)
        if (!opts.quiet) console.error(`[tokenizer] up to date (${tokenizer})`)
      } else {
        const bar = new ProgressBar({ label: "tokenizer", format: fmtBytes, quiet: opts.quiet })
        const t = yield* trainTokenizer(
          { files: spec.data, vocabSize: spec.vocab_size ?? 6400, minFrequency: spec.min_frequency ?? 2, scheme: spec.scheme ?? "minimind", out: tokenizer },
          (p) => bar.update(p.bytes_read, { phase: p.phase }, p.phase === "reading" ? p.bytes_total : undefined),
        ).pipe(Effect.scoped, Effect.map((tok) => tok.vocabSize))
        vocab = t
        writeFileSync(stamp, JSON.stringify({ hash: want, spec }, null, 2))
        bar.finish(`vocab ${vocab} → ${tokenizer}`)
      }
    }

    const results: PipelineResult["stages"] = []
    let previous: string | undefined
    for (const s of cfg.stages) {
      const resolved = yield* Effect.try({
        try: () => stageOptionsFor(cfg, s, previous, tokenizer, vocab),
        catch: (e) => new PipelineError({ message: e instanceof SettingError ? `${cfg.run}: ${s.stage}: ${keyOf(e.field)}: ${e.message}` : String(e) }),
      })
      const o = { ...resolved, quiet: opts.quiet }
      recordRun(cfg.run, { stage: { name: s.stage, options: o } })
      const stageDir = join(cfg.run, s.stage)
      const stampFile = join(stageDir, "pipeline-stage.json")
      const want = stageHash(o)
      const summaryFile = join(stageDir, "summary.json")
      const done =
        existsSync(summaryFile) && existsSync(stampFile) && JSON.parse(readFileSync(stampFile, "utf8")).hash === want &&
        (JSON.parse(readFileSync(summaryFile, "utf8")) as StageSummary).status === "done"
      if (done) {
        if (!opts.quiet) console.error(`[${s.stage}] already done with this config: skipped`)
        results.push({ stage: s.stage, skipped: true, summary: JSON.parse(readFileSync(summaryFile, "utf8")) })
      } else {
        // A changed config invalidates an old checkpoint of this stage.
        if (existsSync(stampFile) && JSON.parse(readFileSync(stampFile, "utf8")).hash !== want) {
          rmSync(stageDir, { recursive: true, force: true })
        }
        mkdirSync(stageDir, { recursive: true })
        writeFileSync(stampFile, JSON.stringify({ hash: want }))
        const summary = yield* runStage(o)
        results.push({ stage: s.stage, skipped: false, summary })
      }
      previous = s.stage
    }
    return { run: cfg.run, stages: results } satisfies PipelineResult
  })
