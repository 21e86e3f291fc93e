/** `bunmind demo`: the end-to-end run on embedded, generated data (the README's main command). */
import { Effect } from "effect"
import { Command, Flag } from "effect/cli"
import { runDemo } from "../demo/demo.ts"

export const demoCommand = Command.make(
  "demo",
  {
    run: Flag.String("run").pipe(Flag.withDefault("runs/demo"), Flag.withDescription("run directory")),
    seed: Flag.Int("seed").pipe(Flag.withDefault(42)),
    quick: Flag.Boolean("quick").pipe(Flag.withDefault(false), Flag.withDescription("a tiny run (about a minute) that exercises every stage")),
  },
  (a) =>
    Effect.gen(function* () {
      const t0 = performance.now()
      yield* runDemo({ run: a.run, seed: a.seed, quick: a.quick })
      console.log(`demo finished in ${((performance.now() - t0) / 1000).toFixed(0)} s`)
    }),
).pipe(
  Command.withDescription(
    "generate a world of facts, train a tokenizer, pretrain, SFT and DPO a small model, and score held-out questions (finished stages are reused on a rerun)",
  ),
)
