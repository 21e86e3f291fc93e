/** `bunmind export edge`: a static chat site that runs the model in the browser (wasm, Web Worker). */
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { EdgeExportError, exportEdge, formatReport, QUANTIZATIONS } from "../edge/export.ts"
import { hfExport } from "./export-hf.ts"
import { ggufCommand } from "./export-gguf.ts"

const edge = Command.make(
  "edge",
  {
    model: Flag.String("model").pipe(Flag.withDescription("checkpoint directory: config.json + model.safetensors (+ tokenizer.json, tokenizer_config.json)")),
    out: Flag.String("out").pipe(Flag.withDescription("output directory for the static site (replaced if it is an earlier export)")),
    tokenizer: Flag.String("tokenizer").pipe(Flag.optional, Flag.withDescription("tokenizer.json or its directory, with tokenizer_config.json (default: the model directory)")),
    quantize: Flag.Literals("quantize", QUANTIZATIONS).pipe(
      Flag.withDefault("none" as const),
      Flag.withDescription("weights in the site: none (f32), bf16 (½ size) or int8 (per-row, ~¼ size); dequantised to f32 at load"),
    ),
    name: Flag.String("name").pipe(Flag.optional, Flag.withDescription("page title (default: the model directory's name)")),
  },
  (a) =>
    Effect.gen(function* () {
      const report = yield* Effect.tryPromise({
        try: () =>
          exportEdge({
            model: a.model,
            out: a.out,
            tokenizer: Option.getOrUndefined(a.tokenizer),
            quantize: a.quantize,
            name: Option.getOrUndefined(a.name),
          }),
        catch: (e) => (e instanceof EdgeExportError ? e : new EdgeExportError({ message: e instanceof Error ? e.message : String(e) })),
      })
      yield* Effect.sync(() => console.log(formatReport(report)))
    }),
).pipe(Command.withDescription("write a static site that chats with the model in the browser (wasm + Web Worker, no server-side model)"))

export const edgeCommand = Command.make("export").pipe(
  Command.withDescription("export a model for other runtimes"),
  Command.withSubcommands([edge, hfExport, ggufCommand]),
)
