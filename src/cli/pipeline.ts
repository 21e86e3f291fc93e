/** `bunmind pipeline run <config.json>`: every stage of a run from one file, skipping finished ones. */
import { Effect } from "effect"
import { Argument, Command } from "effect/cli"
import { readConfig, runPipeline } from "../pipeline/pipeline.ts"
import { writeRunReport } from "../report/index.ts"

const run = Command.make(
  "run",
  { config: Argument.String("config").pipe(Argument.withDescription("pipeline config (JSON): run dir, tokenizer, stages")) },
  (a) =>
    Effect.gen(function* () {
      const cfg = yield* Effect.try({ try: () => readConfig(a.config), catch: (e) => e as Error })
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
