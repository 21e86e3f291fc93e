/** `bunmind model ...` (init, info, logits) and `bunmind generate`. */
import { existsSync } from "node:fs"
import { join } from "node:path"
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { importPth, initModel, loadModel, PRESETS } from "../model/model.ts"
import { writeHfExtras } from "../export/hf.ts"
import { readFileSync } from "node:fs"
import { DEFAULT_GENERATION, streamText } from "../model/generate.ts"
import { loadTokenizer } from "../tokenizer/tokenizer.ts"
import { applyChatTemplate, loadTokenizerConfig } from "../tokenizer/chat-template.ts"
import { parseDeviceName, type Device } from "../native/library.ts"
import { UsageError } from "./errors.ts"

export const deviceFlag = Flag.String("device").pipe(
  Flag.withDefault("cpu"),
  Flag.withDescription("cpu, or cuda[:N] (needs the CUDA build of the library)"),
)

/** Validates `--device` (`cpu`, `cuda`, `cuda:N`); whether CUDA works is checked when the library loads. */
export const parseDevice = (d: string): Effect.Effect<Device, UsageError> => {
  const dev = parseDeviceName(d.trim())
  return dev ? Effect.succeed(dev) : Effect.fail(new UsageError({ message: `--device ${d}: expected cpu, cuda or cuda:N` }))
}

const init = Command.make(
  "init",
  {
    preset: Flag.String("preset").pipe(Flag.withDescription(`one of: ${PRESETS.join(", ")}`)),
    out: Flag.String("out").pipe(Flag.withDescription("output directory (config.json + model.safetensors)")),
    seed: Flag.Int("seed").pipe(Flag.withDefault(42)),
    vocabSize: Flag.Int("vocab-size").pipe(Flag.optional, Flag.withDescription("override the preset's vocabulary size (match your tokenizer)")),
    tokenizer: Flag.String("tokenizer").pipe(Flag.optional, Flag.withDescription("tokenizer.json or dir to put beside the model (its vocabulary size is used unless --vocab-size)")),
    device: deviceFlag,
  },
  (a) =>
    Effect.gen(function* () {
      if (!PRESETS.includes(a.preset as never)) {
        return yield* Effect.fail(new UsageError({ message: `--preset ${a.preset}: unknown preset; choose one of ${PRESETS.join(", ")}` }))
      }
      const device = yield* parseDevice(a.device)
      const cfg: Record<string, unknown> = { preset: a.preset }
      if (Option.isSome(a.vocabSize)) cfg.vocab_size = a.vocabSize.value
      else if (Option.isSome(a.tokenizer)) {
        const tok = yield* loadTokenizer(a.tokenizer.value)
        cfg.vocab_size = tok.vocabSize
      }
      const m = yield* initModel(cfg, a.seed, device)
      const family = m.saveHf(a.out)
      if (Option.isSome(a.tokenizer)) writeHfExtras(a.out, m, a.tokenizer.value, family)
      console.log(`${a.out}: ${a.preset} as ${family}, ${(m.info().num_parameters / 1e6).toFixed(2)}M parameters (seed ${a.seed})`)
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("create a randomly initialised model (MiniMind's init scheme) as an HF checkpoint"))

const info = Command.make(
  "info",
  { model: Flag.String("model").pipe(Flag.withDescription("model directory")), device: deviceFlag },
  (a) =>
    Effect.gen(function* () {
      const m = yield* loadModel(a.model, yield* parseDevice(a.device))
      const i = m.info()
      console.log(JSON.stringify({ model: a.model, num_parameters: i.num_parameters, dtype: i.dtype, device: i.device, config: i.config, warnings: i.warnings }, null, 2))
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("parameter count, config and dtype of a checkpoint"))

const logits = Command.make(
  "logits",
  {
    model: Flag.String("model").pipe(Flag.withDescription("model directory")),
    ids: Flag.String("ids").pipe(Flag.withDescription("comma-separated token ids, e.g. 1,2,3")),
    device: deviceFlag,
  },
  (a) =>
    Effect.gen(function* () {
      const ids = a.ids.split(",").map((s) => s.trim())
      const bad = ids.findIndex((s) => !/^\d+$/.test(s))
      if (bad >= 0 || ids.length === 0) {
        return yield* Effect.fail(new UsageError({ message: `--ids: "${ids[bad] ?? ""}" at position ${bad} is not a token id; expected e.g. 1,2,3` }))
      }
      const m = yield* loadModel(a.model, yield* parseDevice(a.device))
      const out = yield* Effect.try({ try: () => m.forward(ids.map(Number)), catch: (e) => e as Error })
      // Shortest round-trip representation of each f32.
      console.log(`[${Array.from(out, (x) => String(x)).join(",")}]`)
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("print the last position's logits for a token sequence as one JSON array"))

const importCmd = Command.make(
  "import",
  {
    pth: Flag.String("pth").pipe(Flag.withDescription("PyTorch state dict saved with torch.save (MiniMind's .pth: the dict, or a resume checkpoint's \"model\")")),
    out: Flag.String("out").pipe(Flag.withDescription("output model directory (HF layout)")),
    preset: Flag.String("preset").pipe(Flag.optional, Flag.withDescription(`the model's preset (default: the one whose tensor shapes match): ${PRESETS.join(", ")}`)),
    config: Flag.String("config").pipe(Flag.optional, Flag.withDescription("a config.json describing the model instead of a preset")),
    tokenizer: Flag.String("tokenizer").pipe(Flag.optional, Flag.withDescription("tokenizer.json or dir to put beside the model")),
    dtype: Flag.Literals("dtype", ["f32", "bf16", "f16"] as const).pipe(Flag.withDefault("f32" as const)),
  },
  (a) =>
    Effect.gen(function* () {
      if (Option.isSome(a.preset) && Option.isSome(a.config)) return yield* Effect.fail(new UsageError({ message: "give --preset or --config, not both" }))
      if (Option.isSome(a.preset) && !PRESETS.includes(a.preset.value as never)) {
        return yield* Effect.fail(new UsageError({ message: `--preset ${a.preset.value}: unknown preset; choose one of ${PRESETS.join(", ")}` }))
      }
      let cfg: Record<string, unknown> = {}
      if (Option.isSome(a.preset)) cfg = { preset: a.preset.value }
      if (Option.isSome(a.config)) {
        const path = a.config.value
        cfg = yield* Effect.try({ try: () => JSON.parse(readFileSync(path, "utf8")), catch: (e) => new UsageError({ message: `--config ${path}: ${(e as Error).message}` }) })
      }
      const m = yield* importPth(a.pth, cfg)
      const family = m.saveHf(a.out, a.dtype)
      if (Option.isSome(a.tokenizer)) writeHfExtras(a.out, m, a.tokenizer.value, family)
      for (const w of m.info().warnings) console.error(`warning: ${w}`)
      console.log(`${a.out}: ${(m.info().num_parameters / 1e6).toFixed(2)}M parameters from ${a.pth}, saved as ${family}`)
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("convert a PyTorch .pth state dict (MiniMind's checkpoints) into a model directory"))

export const modelCommand = Command.make("model").pipe(
  Command.withDescription("create, convert and inspect models (MiniMind presets; Llama, Qwen2, Qwen3, Qwen3-MoE and MiniMind config.json + safetensors)"),
  Command.withSubcommands([init, importCmd, info, logits]),
)

/** The tokenizer for a model: `--tokenizer`, else the model directory, else its parent (run dirs). */
export const resolveTokenizer = (model: string, tokenizer: Option.Option<string>): Effect.Effect<string, UsageError> => {
  if (Option.isSome(tokenizer)) return Effect.succeed(tokenizer.value)
  for (const dir of [model, join(model, ".."), join(model, "..", "tokenizer")]) {
    if (existsSync(join(dir, "tokenizer.json"))) return Effect.succeed(dir)
  }
  return Effect.fail(new UsageError({ message: `no tokenizer.json next to ${model}: pass --tokenizer <tokenizer.json or dir>` }))
}

export const samplingFlags = {
  temperature: Flag.Finite("temperature").pipe(Flag.withDefault(DEFAULT_GENERATION.temperature), Flag.withDescription("0 = greedy")),
  topK: Flag.Int("top-k").pipe(Flag.withDefault(DEFAULT_GENERATION.topK), Flag.withDescription("0 = off")),
  topP: Flag.Finite("top-p").pipe(Flag.withDefault(DEFAULT_GENERATION.topP), Flag.withDescription("1 = off")),
  repetitionPenalty: Flag.Finite("repetition-penalty").pipe(Flag.withDefault(1.0)),
  maxNewTokens: Flag.Int("max-new-tokens").pipe(Flag.withDefault(256)),
  seed: Flag.Int("seed").pipe(Flag.withDefault(42)),
}

export const generateCommand = Command.make(
  "generate",
  {
    model: Flag.String("model").pipe(Flag.withDescription("model directory")),
    tokenizer: Flag.String("tokenizer").pipe(Flag.optional, Flag.withDescription("tokenizer.json or dir (default: next to the model)")),
    prompt: Flag.String("prompt"),
    raw: Flag.Boolean("raw").pipe(Flag.withDefault(false), Flag.withDescription("continue the prompt as plain text instead of a chat turn")),
    system: Flag.String("system").pipe(Flag.optional),
    think: Flag.Boolean("think").pipe(Flag.withDefault(false), Flag.withDescription("open a <think> block in the generation prompt")),
    device: deviceFlag,
    ...samplingFlags,
  },
  (a) =>
    Effect.gen(function* () {
      const device = yield* parseDevice(a.device)
      const tokDir = yield* resolveTokenizer(a.model, a.tokenizer)
      const m = yield* loadModel(a.model, device)
      const tok = yield* loadTokenizer(tokDir)
      let prompt: Uint32Array
      if (a.raw) {
        prompt = Uint32Array.from([...(m.config.bos_token_id === null ? [] : [m.config.bos_token_id]), ...tok.encode(a.prompt)])
      } else {
        const cfg = yield* Effect.try({ try: () => loadTokenizerConfig(tokDir), catch: (e) => e as Error })
        const messages = [
          ...(Option.isSome(a.system) ? [{ role: "system" as const, content: a.system.value }] : []),
          { role: "user" as const, content: a.prompt },
        ]
        prompt = tok.encode(applyChatTemplate(cfg, messages, { addGenerationPrompt: true, enableThinking: a.think }))
      }
      const opts = { temperature: a.temperature, topK: a.topK, topP: a.topP, repetitionPenalty: a.repetitionPenalty, maxNewTokens: a.maxNewTokens, seed: a.seed }
      const it = streamText(m, tok, prompt, opts)
      let r = it.next()
      while (!r.done) {
        process.stdout.write(r.value.text)
        r = it.next()
      }
      process.stdout.write("\n")
      const info = r.value
      console.error(`[${info.generated_tokens} tokens, finish: ${info.finish_reason}]`)
    }).pipe(Effect.scoped),
).pipe(Command.withDescription("generate text from a model (chat turn by default; --raw for plain continuation)"))
