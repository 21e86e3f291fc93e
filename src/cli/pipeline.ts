/** `bunmind pipeline run <config.json>`: every stage of a run from one file, skipping finished ones. */
import { Effect, Option } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { readConfig, runPipeline } from "../pipeline/pipeline.ts"
import { writeRunReport } from "../report/index.ts"
import { parseDevice } from "./model.ts"
import { checkNproc } from "./train.ts"

const run = Command.make(
  "run",
  {
    config: Argument.String("config").pipe(Argument.withDescription("pipeline config (JSON): run dir, tokenizer, stages")),
    device: Flag.String("device").pipe(Flag.optional, Flag.withDescription("cpu, or cuda[:N] (overrides the config's \"device\"; default cpu)")),
    nproc: Flag.Int("nproc").pipe(Flag.optional, Flag.withDescription("data-parallel processes, one per GPU (overrides the config's \"nproc\")")),
    distBackend: Flag.Literals("dist-backend", ["nccl", "tcp"] as const).pipe(Flag.optional, Flag.withDescription("nccl (GPUs) or tcp (CPU sockets, for testing); overrides the config's \"distBackend\"")),
  },
  (a) =>
    Effect.gen(function* () {
      const cfg = yield* Effect.try({ try: () => readConfig(a.config), catch: (e) => e as Error })
      if (Option.isSome(a.device)) cfg.device = yield* parseDevice(a.device.value)
      if (Option.isSome(a.nproc)) cfg.nproc = a.nproc.value
      if (Option.isSome(a.distBackend)) cfg.distBackend = a.distBackend.value
      yield* checkNproc(cfg.nproc ?? 1, cfg.device ?? "cpu", cfg.distBackend ?? "nccl")
      const r = yield* runPipeline(cfg)
      for (const s of r.stages) {
        console.log(`${s.stage}: ${s.skipped ? "skipped (done)" : s.summary.status}, ${s.summary.steps} steps, loss ${s.summary.final_loss?.toFixed(4) ?? "-"}`)
      }
      const report = yield* Effect.promise(() => writeRunReport(r.run))
      console.log(`report: ${report}`)
    }),
).pipe(Command.withDescription("run the stages of a pipeline config in order (finished stages are skipped, interrupted ones resumed)"))

export const pipelineCommand = Command.make("pipeline").pipe(
  Command.withDescription("multi-stage training runs from one config file"),
  Command.withSubcommands([run]),
)
