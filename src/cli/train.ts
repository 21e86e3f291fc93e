/** `bunmind train <stage>` for pretrain / sft / lora / dpo / distill, and `bunmind lora merge`. */
import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { loadModel, PRESETS } from "../model/model.ts"
import { tokenizerVocabSize } from "../tokenizer/tokenizer.ts"
import { publishHf } from "../export/hf.ts"
import {
  LORA_DEFAULTS,
  OBJECTIVE_DEFAULTS,
  recordRun,
  resolveStageOptions,
  RUN_DEFAULTS,
  runStage,
  SettingError,
  STAGES,
  type StageName,
  type StageOptions,
  type StageSettings,
} from "../train/index.ts"
import { machineFacts, nprocProblem, type DistBackend } from "../train/distributed.ts"
import { UsageError } from "./errors.ts"
import { deviceFlag, parseDevice } from "./model.ts"
import type { Device } from "../native/library.ts"

const opt = <A>(f: Flag.Flag<A>, description: string) => f.pipe(Flag.optional, Flag.withDescription(description))

export const nprocFlag = Flag.Int("nproc").pipe(
  Flag.withDefault(RUN_DEFAULTS.nproc),
  Flag.withDescription("data-parallel processes, one per GPU: each step's --batch-size × --accum sequences are split over them (N > 1 needs --device cuda, NCCL and N GPUs)"),
)

export const distBackendFlag = Flag.Literals("dist-backend", ["nccl", "tcp"] as const).pipe(
  Flag.withDefault(RUN_DEFAULTS.distBackend),
  Flag.withDescription("how --nproc ranks sum gradients: nccl (GPUs) or tcp (sockets on the host; runs on the CPU, for trying and testing)"),
)

/** Fails with a `UsageError` that says what is missing when `--nproc n` cannot run on `device`. */
export const checkNproc = (n: number, device: Device, backend: DistBackend = "nccl") =>
  Effect.suspend(() => {
    const problem = nprocProblem(n, device, machineFacts, backend)
    return problem ? Effect.fail(new UsageError({ message: problem })) : Effect.void
  })

const commonFlags = {
  run: Flag.String("run").pipe(Flag.withDefault("default"), Flag.withDescription("run name: everything goes to runs/<name>/ (or --run-dir)")),
  runDir: opt(Flag.String("run-dir"), "explicit run directory (overrides --run)"),
  data: Flag.String("data").pipe(Flag.atLeast(1), Flag.withDescription("dataset files (JSONL/CSV/Parquet/txt) or a prepared shard directory")),
  tokenizer: opt(Flag.String("tokenizer"), "tokenizer dir or tokenizer.json (default: <run>/tokenizer)"),
  init: opt(Flag.String("init"), "model directory to start from (default: the previous stage's model in the run)"),
  epochs: opt(Flag.Int("epochs"), "passes over the data"),
  steps: opt(Flag.Int("steps"), "stop after this many optimizer steps"),
  batchSize: opt(Flag.Int("batch-size"), "rows per micro-batch"),
  accum: opt(Flag.Int("accum"), "gradient accumulation micro-batches per step"),
  lr: opt(Flag.Finite("lr"), "peak learning rate (cosine to lr/10)"),
  seqLen: opt(Flag.Int("seq-len"), "max sequence length in tokens"),
  warmup: Flag.Int("warmup").pipe(Flag.withDefault(RUN_DEFAULTS.warmupSteps), Flag.withDescription("linear warmup steps")),
  weightDecay: opt(Flag.Finite("weight-decay"), "AdamW weight decay (not on norms unless --decay-norms)"),
  decayNorms: Flag.Boolean("decay-norms").pipe(Flag.withDefault(RUN_DEFAULTS.decayNorms), Flag.withDescription("weight decay on norm gains too (upstream decays every parameter)")),
  accumMean: Flag.Literals("accum-mean", ["token", "micro"] as const).pipe(
    Flag.withDefault(RUN_DEFAULTS.accumMean),
    Flag.withDescription("loss of a step with --accum > 1: one token mean over the step, or the mean of micro-batch means (upstream)"),
  ),
  dropLast: Flag.Boolean("drop-last").pipe(Flag.withDefault(RUN_DEFAULTS.dropLast), Flag.withDescription("leave out each epoch's last, short batch (upstream trains on it)")),
  gradClip: opt(Flag.Finite("grad-clip"), "global gradient-norm clip (0 = off)"),
  seed: Flag.Int("seed").pipe(Flag.withDefault(RUN_DEFAULTS.seed)),
  evalEvery: Flag.Int("eval-every").pipe(Flag.withDefault(RUN_DEFAULTS.evalEvery), Flag.withDescription("held-out loss every N steps")),
  evalBatches: Flag.Int("eval-batches").pipe(Flag.withDefault(RUN_DEFAULTS.evalBatches)),
  evalFraction: Flag.Finite("eval-fraction").pipe(Flag.withDefault(RUN_DEFAULTS.evalFraction), Flag.withDescription("share of samples held out")),
  saveEvery: Flag.Int("save-every").pipe(Flag.withDefault(RUN_DEFAULTS.saveEvery), Flag.withDescription("checkpoint every N steps (and at the end / on Ctrl-C)")),
  resume: Flag.Boolean("resume").pipe(Flag.withDefault(false), Flag.withDescription("continue from the stage's last checkpoint")),
  onBadRecord: Flag.Literals("on-bad-record", ["skip", "fail"] as const).pipe(Flag.withDefault(RUN_DEFAULTS.onBadRecord)),
  skipUnlabeled: Flag.Boolean("skip-unlabeled").pipe(
    Flag.withDefault(false),
    Flag.withDescription("SFT/DPO: drop samples with no assistant token within --seq-len (upstream keeps them)"),
  ),
  pack: Flag.Boolean("pack").pipe(Flag.withDefault(RUN_DEFAULTS.pack), Flag.withDescription("pretrain: pack documents into full rows")),
  systemPromptP: Flag.Finite("random-system-prompt").pipe(Flag.withDefault(RUN_DEFAULTS.systemPromptP), Flag.withDescription("SFT: share given a random system prompt (upstream 0.2)")),
  stripThinkP: Flag.Finite("strip-empty-think").pipe(Flag.withDefault(RUN_DEFAULTS.stripEmptyThinkP), Flag.withDescription("SFT: share of empty think blocks stripped (upstream 0.8)")),
  device: deviceFlag,
  nproc: nprocFlag,
  distBackend: distBackendFlag,
  precision: Flag.Literals("precision", ["auto", "bf16", "f32"] as const).pipe(
    Flag.withDefault(RUN_DEFAULTS.precision),
    Flag.withDescription("training forward: bf16 autocast (f32 master weights) or f32; auto = bf16 on CUDA, f32 on the CPU"),
  ),
}

type Common = {
  [K in keyof typeof commonFlags]: (typeof commonFlags)[K] extends Flag.Flag<infer A> ? A : never
}

const get = <A>(o: Option.Option<A>, d: A): A => (Option.isSome(o) ? o.value : d)

export const runDirOf = (run: string, runDir: Option.Option<string>) => resolve(get(runDir, join("runs", run)))

/** The `--flag` of each setting whose name is not its field in kebab case, for error messages. */
const FLAG_OF: Record<string, string> = {
  systemPromptP: "--random-system-prompt",
  stripEmptyThinkP: "--strip-empty-think",
  "lora.r": "--rank",
  "lora.lora_alpha": "--lora-alpha",
  "lora.lora_dropout": "--lora-dropout",
  "lora.target_modules": "--targets",
}
const flagOf = (field: string) => FLAG_OF[field] ?? `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`

/**
 * Builds the stage options from flags (resolveStageOptions: the stage's defaults and every value
 * check) and the run layout, and records them in `<run>/run.json`. `extra`: the stage's own flags.
 */
export const stageOptions = (stage: StageName, a: Common, extra: Partial<StageSettings> = {}, preset?: string) =>
  Effect.gen(function* () {
    const device = yield* parseDevice(a.device)
    yield* checkNproc(a.nproc, device, a.distBackend)
    const runDir = runDirOf(a.run, a.runDir)
    const tokenizer = get(a.tokenizer, join(runDir, "tokenizer"))
    const tokFile = existsSync(join(tokenizer, "tokenizer.json")) ? join(tokenizer, "tokenizer.json") : tokenizer
    if (!existsSync(tokFile)) {
      return yield* Effect.fail(new UsageError({ message: `no tokenizer at ${tokenizer}: pass --tokenizer, or train one into the run with \`bunmind tokenizer train --out ${join(runDir, "tokenizer")}\`` }))
    }
    let init: StageOptions["init"]
    if (Option.isSome(a.init)) init = { model: a.init.value }
    else if (preset) {
      init = { preset, overrides: { vocab_size: tokenizerVocabSize(tokenizer) } }
    } else {
      const from = STAGES[stage].from
      const dir = join(runDir, from, "model")
      if (from === "scratch" || !existsSync(join(dir, "config.json"))) {
        return yield* Effect.fail(new UsageError({ message: `${stage} starts from a trained model: pass --init <model dir> (looked for ${dir})` }))
      }
      init = { model: dir }
    }
    for (const f of a.data) {
      if (!existsSync(f)) return yield* Effect.fail(new UsageError({ message: `--data ${f}: no such file or directory` }))
    }
    const opt = <A>(o: Option.Option<A>): A | undefined => (Option.isSome(o) ? o.value : undefined)
    const settings: StageSettings = {
      data: a.data,
      tokenizer,
      init,
      seqLen: opt(a.seqLen),
      batchSize: opt(a.batchSize),
      accum: opt(a.accum),
      epochs: opt(a.epochs),
      steps: opt(a.steps),
      lr: opt(a.lr),
      warmup: a.warmup,
      weightDecay: opt(a.weightDecay),
      decayNorms: a.decayNorms,
      accumMean: a.accumMean,
      dropLast: a.dropLast,
      gradClip: opt(a.gradClip),
      seed: a.seed,
      evalEvery: a.evalEvery,
      evalBatches: a.evalBatches,
      evalFraction: a.evalFraction,
      saveEvery: a.saveEvery,
      resume: a.resume,
      onBadRecord: a.onBadRecord,
      ...(a.skipUnlabeled ? { skipUnlabeled: true } : {}),
      pack: a.pack,
      systemPromptP: a.systemPromptP,
      stripEmptyThinkP: a.stripThinkP,
      device,
      // auto is the default: left out of the options, as before.
      ...(a.precision !== "auto" ? { precision: a.precision } : {}),
      nproc: a.nproc,
      distBackend: a.distBackend,
      ...extra,
    }
    const o = yield* Effect.try({
      try: () => resolveStageOptions(stage, runDir, settings),
      catch: (e) => (e instanceof SettingError ? new UsageError({ message: `${flagOf(e.field)}: ${e.message}` }) : (e as Error)),
    })
    recordRun(runDir, { stage: { name: stage, options: o } })
    return o
  })

const report = (s: { stage: string; status: string; steps: number; final_loss: number | null; model_dir: string }) =>
  Effect.sync(() => console.log(`${s.stage}: ${s.status} after ${s.steps} steps, loss ${s.final_loss?.toFixed(4) ?? "-"} → ${s.model_dir}`))

const pretrainCmd = Command.make(
  "pretrain",
  { ...commonFlags, preset: Flag.String("preset").pipe(Flag.withDefault(RUN_DEFAULTS.preset), Flag.withDescription(`architecture when starting from scratch: ${PRESETS.join(", ")}`)) },
  (a) =>
    Effect.gen(function* () {
      if (!PRESETS.includes(a.preset as never)) return yield* Effect.fail(new UsageError({ message: `--preset ${a.preset}: unknown; choose one of ${PRESETS.join(", ")}` }))
      const o = yield* stageOptions("pretrain", a, {}, Option.isSome(a.init) ? undefined : a.preset)
      yield* report(yield* runStage(o))
    }),
).pipe(Command.withDescription("pretrain a model on {\"text\"} documents (from scratch with --preset, or continue --init)"))

const sftCmd = Command.make("sft", commonFlags, (a) =>
  Effect.gen(function* () {
    yield* report(yield* runStage(yield* stageOptions("sft", a)))
  }),
).pipe(Command.withDescription("full supervised fine-tuning on chat conversations (loss on assistant spans)"))

const loraCmd = Command.make(
  "lora",
  {
    ...commonFlags,
    rank: Flag.Int("rank").pipe(Flag.withDefault(LORA_DEFAULTS.r)),
    loraAlpha: opt(Flag.Finite("lora-alpha"), "scale numerator (default: = rank, MiniMind's unscaled adapters)"),
    loraDropout: Flag.Finite("lora-dropout").pipe(Flag.withDefault(LORA_DEFAULTS.lora_dropout ?? 0)),
    rslora: Flag.Boolean("rslora").pipe(Flag.withDefault(false), Flag.withDescription("rank-stabilised LoRA (PEFT's use_rslora): scale alpha/√r instead of alpha/r")),
    targets: Flag.String("targets").pipe(
      Flag.withDefault(LORA_DEFAULTS.target_modules.join(",")),
      Flag.withDescription("comma-separated: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj (or PEFT-style suffixes such as self_attn.q_proj, mlp.experts.0.up_proj), all-linear, or square (every projection with as many inputs as outputs: upstream's rule)"),
    ),
  },
  (a) =>
    Effect.gen(function* () {
      const lora = {
        r: a.rank,
        ...(Option.isSome(a.loraAlpha) ? { lora_alpha: a.loraAlpha.value } : {}),
        lora_dropout: a.loraDropout,
        target_modules: a.targets.split(",").map((s) => s.trim()).filter(Boolean),
        ...(a.rslora ? { use_rslora: true } : {}),
      }
      yield* report(yield* runStage(yield* stageOptions("lora", a, { lora })))
    }),
).pipe(Command.withDescription("train LoRA adapters only (base frozen); writes the adapters and a merged model"))

const dpoCmd = Command.make(
  "dpo",
  {
    ...commonFlags,
    beta: Flag.Finite("beta").pipe(Flag.withDefault(OBJECTIVE_DEFAULTS.beta)),
    reference: opt(Flag.String("reference"), "frozen reference model (default: the init model)"),
  },
  (a) =>
    Effect.gen(function* () {
      yield* report(yield* runStage(yield* stageOptions("dpo", a, { beta: a.beta, ...(Option.isSome(a.reference) ? { reference: a.reference.value } : {}) })))
    }),
).pipe(Command.withDescription("direct preference optimisation on {\"chosen\",\"rejected\"} pairs against a frozen reference"))

const distillCmd = Command.make(
  "distill",
  {
    ...commonFlags,
    teacher: Flag.String("teacher").pipe(Flag.withDescription("teacher model directory (same tokenizer)")),
    alpha: Flag.Finite("alpha").pipe(Flag.withDefault(OBJECTIVE_DEFAULTS.alpha), Flag.withDescription("weight of the CE term")),
    temperature: Flag.Finite("temperature").pipe(Flag.withDefault(OBJECTIVE_DEFAULTS.temperature)),
  },
  (a) =>
    Effect.gen(function* () {
      yield* report(yield* runStage(yield* stageOptions("distill", a, { alpha: a.alpha, temperature: a.temperature, teacher: a.teacher })))
    }),
).pipe(Command.withDescription("distil a teacher into the student: α·CE + (1−α)·T²·KL on assistant positions"))

export const trainCommand = Command.make("train").pipe(
  Command.withDescription("training stages: pretrain → sft → lora | dpo | distill (resumable, Ctrl-C keeps a checkpoint)"),
  Command.withSubcommands([pretrainCmd, sftCmd, loraCmd, dpoCmd, distillCmd]),
)

const merge = Command.make(
  "merge",
  {
    model: Flag.String("model").pipe(Flag.withDescription("base model directory")),
    adapter: Flag.String("adapter").pipe(Flag.withDescription("adapter directory (adapter_config.json + adapter_model.safetensors)")),
    out: Flag.String("out").pipe(Flag.withDescription("output model directory")),
    device: deviceFlag,
  },
  (a) =>
    Effect.gen(function* () {
      const m = yield* loadModel(a.model, yield* parseDevice(a.device))
      const warnings = yield* Effect.try({ try: () => m.loadLora(a.adapter, true), catch: (e) => e as Error })
      for (const w of warnings) console.error(`warning: ${w}`)
      m.save(a.out)
      publishHf(a.out, a.model)
      console.log(`merged ${a.adapter} into ${a.model} → ${a.out}`)
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("fold LoRA adapters into the base weights"))

export const loraCommand = Command.make("lora").pipe(Command.withDescription("LoRA adapter tools"), Command.withSubcommands([merge]))

