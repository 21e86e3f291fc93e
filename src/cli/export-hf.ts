/** `bunmind export hf`: the model as a Hugging Face folder (native transformers class when one computes it). */
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { exportHf, HfExportError } from "../export/hf.ts"
import { HF_ARCHS } from "../model/model.ts"
import { resolveTokenizer } from "./model.ts"

export const hfExport = Command.make(
  "hf",
  {
    model: Flag.String("model").pipe(Flag.withDescription("model directory (any family bunmind reads)")),
    out: Flag.String("out").pipe(Flag.withDescription("output directory (created; files in it are replaced)")),
    arch: Flag.Literals("arch", HF_ARCHS).pipe(
      Flag.withDefault("auto" as const),
      Flag.withDescription("auto: Llama/Qwen2 (dense), Qwen3 (q/k-norm), Qwen3-MoE (routed MoE), else MiniMind's; a family that cannot hold the model is refused"),
    ),
    dtype: Flag.Literals("dtype", ["f32", "bf16", "f16"] as const).pipe(Flag.withDefault("f32" as const), Flag.withDescription("weights' storage type")),
    tokenizer: Flag.String("tokenizer").pipe(Flag.optional, Flag.withDescription("tokenizer.json or dir (default: next to the model)")),
  },
  (a) =>
    Effect.gen(function* () {
      const tok = yield* resolveTokenizer(a.model, a.tokenizer).pipe(Effect.option)
      const r = yield* Effect.try({
        try: () => exportHf({ model: a.model, out: a.out, arch: a.arch, dtype: a.dtype, tokenizer: Option.getOrUndefined(tok) }),
        catch: (e) => (e instanceof HfExportError ? e : new HfExportError({ message: e instanceof Error ? e.message : String(e) })),
      })
      console.log(`${r.out}: ${r.family}${r.native ? " (loads in transformers without trust_remote_code)" : " (MiniMind's architecture, no native transformers class: loads with trust_remote_code=True)"}`)
      console.log(`  ${r.files.join(", ")}`)
      if (Option.isNone(tok)) console.error(`  note: no tokenizer.json next to ${a.model}; pass --tokenizer to include one`)
    }),
).pipe(Command.withDescription("write a Hugging Face model folder: config, weights, tokenizer, generation_config.json, model card"))
