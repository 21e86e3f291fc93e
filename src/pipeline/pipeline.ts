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
import { ProgressBar, fmtBytes } from "../cli/progress.ts"
import { tokenizerVocabSize } from "../tokenizer/tokenizer.ts"
import { trainTokenizer } from "../tokenizer/train.ts"
import { runStage, type StageName, type StageOptions, type StageSummary } from "../train/loop.ts"
import { STAGE_DEFAULTS } from "../train/stages.ts"
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

const STAGES: StageName[] = ["pretrain", "sft", "lora", "dpo", "distill"]

const hash = (v: unknown) => createHash("sha256").update(JSON.stringify(v)).digest("hex").slice(0, 16)

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
  if (c.nproc !== undefined && !(Number.isInteger(c.nproc) && (c.nproc as number) >= 1)) fail("nproc", `expected a positive integer, got ${JSON.stringify(c.nproc)}`)
  if (c.distBackend !== undefined && !["nccl", "tcp"].includes(c.distBackend as string)) fail("distBackend", `expected nccl or tcp, got ${JSON.stringify(c.distBackend)}`)
  if (c.precision !== undefined && !["auto", "bf16", "f32"].includes(c.precision as string)) fail("precision", `expected auto, bf16 or f32, got ${JSON.stringify(c.precision)}`)
  ;(c.stages as unknown[]).forEach((s, i) => {
    if (!s || typeof s !== "object") fail(`stages[${i}]`, "expected an object")
    const st = s as Record<string, unknown>
    if (!STAGES.includes(st.stage as StageName)) fail(`stages[${i}].stage`, `expected one of ${STAGES.join(", ")}, got ${JSON.stringify(st.stage)}`)
    if (!Array.isArray(st.data) || st.data.length === 0 || !st.data.every((d) => typeof d === "string"))
      fail(`stages[${i}].data`, "expected a non-empty list of files")
    for (const k of ["epochs", "steps", "batchSize", "accum", "seqLen", "evalEvery", "saveEvery"]) {
      if (st[k] !== undefined && !(Number.isInteger(st[k]) && (st[k] as number) >= 0)) fail(`stages[${i}].${k}`, `expected a non-negative integer, got ${JSON.stringify(st[k])}`)
    }
    if (st.lr !== undefined && !(typeof st.lr === "number" && st.lr > 0)) fail(`stages[${i}].lr`, "expected a positive number")
    for (const k of ["decayNorms", "dropLast", "skipUnlabeled"]) {
      if (st[k] !== undefined && typeof st[k] !== "boolean") fail(`stages[${i}].${k}`, `expected true or false, got ${JSON.stringify(st[k])}`)
    }
    if (st.accumMean !== undefined && !["token", "micro"].includes(st.accumMean as string)) fail(`stages[${i}].accumMean`, `expected token or micro, got ${JSON.stringify(st.accumMean)}`)
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

/** Stage options for one pipeline entry. */
export function stageOptionsFor(cfg: PipelineConfig, s: PipelineStage, previous: string | undefined, tokenizer: string, vocab: number): StageOptions {
  const d = STAGE_DEFAULTS[s.stage]
  const init: StageOptions["init"] = s.init
    ? { model: s.init }
    : s.preset || !previous
      ? { preset: s.preset ?? "minimind2-small", overrides: { vocab_size: vocab, ...(s.overrides ?? {}) } }
      : { model: join(cfg.run, previous, "model") }
  const objective: StageOptions["objective"] =
    s.stage === "dpo" ? { kind: "dpo", beta: s.beta ?? 0.15 } : s.stage === "distill" ? { kind: "distill", alpha: s.alpha ?? 0.5, temperature: s.temperature ?? 1.5 } : { kind: "lm" }
  const dl = STAGE_DEFAULTS.lora.lora!
  const lora = s.stage === "lora"
    ? { r: s.lora?.r ?? dl.r, lora_alpha: s.lora?.lora_alpha ?? s.lora?.r ?? dl.lora_alpha, lora_dropout: s.lora?.lora_dropout ?? dl.lora_dropout ?? 0, target_modules: s.lora?.target_modules ?? dl.target_modules }
    : undefined
  const seed = cfg.seed ?? 42
  return {
    stage: s.stage,
    runDir: cfg.run,
    data: s.data,
    tokenizer,
    init,
    seqLen: s.seqLen ?? d.seqLen,
    batchSize: s.batchSize ?? d.batchSize,
    accum: s.accum ?? d.accum,
    epochs: s.epochs ?? d.epochs,
    ...(s.steps !== undefined ? { maxSteps: s.steps } : {}),
    lr: s.lr ?? d.lr,
    minLrRatio: d.minLrRatio,
    warmupSteps: s.warmup ?? 0,
    weightDecay: s.weightDecay ?? d.weightDecay,
    // Only when set, as `precision` below: existing configs keep their stage hash.
    ...(s.decayNorms !== undefined ? { decayNorms: s.decayNorms } : {}),
    ...(s.accumMean !== undefined ? { accumMean: s.accumMean } : {}),
    ...(s.dropLast !== undefined ? { dropLast: s.dropLast } : {}),
    gradClip: s.gradClip === 0 ? null : (s.gradClip ?? d.gradClip),
    seed,
    evalEvery: s.evalEvery ?? 50,
    evalBatches: s.evalBatches ?? 4,
    evalFraction: s.evalFraction ?? 0.02,
    saveEvery: s.saveEvery ?? 100,
    resume: true,
    onBadRecord: "skip",
    // Only when set: the stage hash of existing configs stays the same.
    ...(s.skipUnlabeled ? { skipUnlabeled: true } : {}),
    objective,
    ...(lora ? { lora } : {}),
    ...(s.teacher ? { teacher: s.teacher } : {}),
    ...(s.reference ? { reference: s.reference } : {}),
    augment: { systemPromptP: s.randomSystemPrompt ?? 0, stripEmptyThinkP: s.stripEmptyThink ?? 0, seed },
    pack: s.pack ?? false,
    device: cfg.device ?? "cpu",
    // Only when set: the stage hash (finished-stage detection) of existing configs stays the same.
    ...(cfg.precision ? { precision: cfg.precision } : {}),
    ...((cfg.nproc ?? 1) > 1 ? { parallel: { nproc: cfg.nproc!, backend: cfg.distBackend ?? "nccl" } } : {}),
  }
}

export interface PipelineResult {
  run: string
  stages: { stage: StageName; skipped: boolean; summary: StageSummary }[]
}

/** Runs (or resumes) every stage in order; completed stages with an unchanged config are skipped. */
export const runPipeline = (cfg: PipelineConfig, opts: { quiet?: boolean } = {}) =>
  Effect.gen(function* () {
    mkdirSync(cfg.run, { recursive: true })
    const runFile = join(cfg.run, "run.json")
    const prev = existsSync(runFile) ? JSON.parse(readFileSync(runFile, "utf8")) : {}
    writeFileSync(
      runFile,
      JSON.stringify({ name: cfg.run.split("/").pop(), created: prev.created ?? new Date().toISOString(), command: `bunmind ${process.argv.slice(2).join(" ")}`, stages: cfg.stages.map((s) => s.stage), config: cfg }, null, 2) + "\n",
    )

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
      const o = { ...stageOptionsFor(cfg, s, previous, tokenizer, vocab), quiet: opts.quiet }
      const stageDir = join(cfg.run, s.stage)
      const stampFile = join(stageDir, "pipeline-stage.json")
      // The number of ranks is not part of the stage's identity: a run resumes on any count.
      const want = hash({ ...o, resume: undefined, quiet: undefined, parallel: undefined })
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
