/**
 * One rank of a data-parallel stage (started by launch.ts, not by hand):
 *
 *   BUNMIND_RANK=r BUNMIND_WORLD_SIZE=N BUNMIND_RENDEZVOUS=<file> bun src/train/rank-main.ts <stage.json>
 *
 * Exit status: 0 done, 130 stopped on request (SIGUSR1 from the launcher: every rank finishes the
 * same step, rank 0 writes the checkpoint), 1 failed (the error on stderr).
 */
import { readFileSync } from "node:fs"
import { NodeServices } from "@effect/platform-node"
import { Cause, Effect, Exit } from "effect"
import { distEnv, rankDevice } from "./distributed.ts"
import type { StageOptions } from "./options.ts"
import { runStageHere } from "./run.ts"
import { RANK_DONE, RANK_INTERRUPTED } from "./launch.ts"
import { distBackend, distStopAt, distTimeoutS, rendezvousFile } from "../util/env.ts"

const file = process.argv[2]
if (!file) {
  process.stderr.write("usage: bun src/train/rank-main.ts <stage.json> (started by `bunmind train ... --nproc N`)\n")
  process.exit(2)
}
const o = JSON.parse(readFileSync(file, "utf8")) as StageOptions
const env = distEnv()
const backend = distBackend()
const rendezvous = rendezvousFile()
if (!rendezvous) {
  process.stderr.write("rank-main: BUNMIND_RENDEZVOUS is not set\n")
  process.exit(2)
}
const device = rankDevice(env, o.device)
// Test hook: rank 0 asks for a stop before step k runs (the job then ends after step k).
const stopAt = distStopAt()

let stop = false
process.on("SIGUSR1", () => {
  stop = true
})
// A terminal Ctrl-C normally reaches only the launcher; treat a stray one the same way.
process.on("SIGINT", () => {
  stop = true
})

const timeout = distTimeoutS()
const program = runStageHere({
  ...o,
  device,
  quiet: o.quiet || env.rank !== 0,
  dist: {
    rank: env.rank,
    worldSize: env.worldSize,
    backend,
    rendezvous,
    ...(timeout > 0 ? { timeoutS: timeout } : {}),
    stopRequested: (step) => stop || (env.rank === 0 && stopAt > 0 && step + 1 >= stopAt),
  },
}).pipe(Effect.provide(NodeServices.layer))

const exit = await Effect.runPromiseExit(program)
if (Exit.isSuccess(exit)) process.exit(RANK_DONE)
if (Cause.hasInterruptsOnly(exit.cause)) process.exit(RANK_INTERRUPTED)
const err = Cause.squash(exit.cause) as { message?: string }
process.stderr.write(`rank ${env.rank}: ${err?.message ?? String(err)}\n`)
process.exit(1)
