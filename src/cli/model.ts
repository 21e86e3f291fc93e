/** `bunmind model ...` (init, info, logits) and `bunmind generate`. */
import { existsSync } from "node:fs"
import { join } from "node:path"
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { initModel, loadModel, PRESETS } from "../model/model.ts"
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
      const m = yield* initModel(cfg, a.seed, device)
      m.save(a.out)
      console.log(`${a.out}: ${a.preset}, ${(m.info().num_parameters / 1e6).toFixed(2)}M parameters (seed ${a.seed})`)
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

export const modelCommand = Command.make("model").pipe(
  Command.withDescription("create and inspect models (MiniMind presets, HF config.json + model.safetensors)"),
  Command.withSubcommands([init, info, logits]),
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
