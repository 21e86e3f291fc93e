/** `bunmind report <runDir>`: writes runs/<name>/report.html. */
import { existsSync, statSync } from "node:fs"
import { Effect } from "effect"
import { Argument, Command } from "effect/cli"
import { writeRunReport } from "../report/index.ts"
import { UsageError } from "./errors.ts"

export const reportCommand = Command.make(
  "report",
  { run: Argument.String("run").pipe(Argument.withDescription("a run directory, e.g. runs/<name>")) },
  (a) =>
    Effect.gen(function* () {
      if (!existsSync(a.run) || !statSync(a.run).isDirectory()) {
        return yield* Effect.fail(new UsageError({ message: `${a.run}: not a run directory` }))
      }
      const path = yield* Effect.tryPromise({ try: () => writeRunReport(a.run), catch: (e) => e as Error })
      console.log(path)
    }),
).pipe(Command.withDescription("write a self-contained HTML report card of a training run (stages, curves, eval, configs)"))
