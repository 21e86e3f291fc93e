/** `bunmind export gguf`: one GGUF file for llama.cpp / Ollama (+ an Ollama Modelfile beside it). */
import { basename } from "node:path"
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { exportGguf, formatGgufReport, GGUF_TYPES, GgufExportError } from "../export/gguf.ts"
import { resolveTokenizer } from "./model.ts"

export const ggufCommand = Command.make(
  "gguf",
  {
    model: Flag.String("model").pipe(Flag.withDescription("checkpoint directory: config.json + model.safetensors")),
    out: Flag.String("out").pipe(Flag.withDescription("the .gguf file to write (replaced atomically); a Modelfile is written beside it")),
    type: Flag.Literals("type", GGUF_TYPES).pipe(
      Flag.withDefault("f32" as const),
      Flag.withDescription("weight storage: f32, f16 or q8_0 (norms and the MoE router stay f32)"),
    ),
    tokenizer: Flag.String("tokenizer").pipe(Flag.optional, Flag.withDescription("tokenizer.json or its directory (default: next to the model)")),
    name: Flag.String("name").pipe(Flag.optional, Flag.withDescription("general.name in the file (default: the model directory's name)")),
  },
  (a) =>
    Effect.gen(function* () {
      const tokenizer = yield* resolveTokenizer(a.model, a.tokenizer)
      yield* Effect.sync(() => console.error(`[export gguf] ${a.model} → ${a.out} (${a.type}, tokenizer ${tokenizer})`))
      const result = yield* Effect.try({
        try: () => exportGguf({ model: a.model, out: a.out, type: a.type, tokenizer, name: Option.getOrUndefined(a.name) ?? basename(a.model) }),
        catch: (e) => (e instanceof GgufExportError ? e : new GgufExportError({ message: e instanceof Error ? e.message : String(e) })),
      })
      yield* Effect.sync(() => console.log(formatGgufReport(result)))
    }),
).pipe(Command.withDescription("write a GGUF file (llama.cpp, Ollama) with the tokenizer and chat template, plus an Ollama Modelfile"))
