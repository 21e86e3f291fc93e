/**
 * The data-parallel launcher behind `--nproc N`: torchrun's job, for one training stage.
 *
 *   parent: prepare once (checks, data shards) → write <stage>/dist/stage.json → start N ranks
 *   rank r: `bun src/train/rank-main.ts stage.json` with BUNMIND_RANK=r, BUNMIND_WORLD_SIZE=N,
 *           BUNMIND_LOCAL_RANK=r (device cuda:r on GPUs) → joins the job through the rendezvous
 *           file → trains its share of every step; rank 0 writes everything
 *
 * The ranks run in their own process group, so a terminal's Ctrl-C reaches only this process: it
 * then asks every rank to stop (SIGUSR1), they all finish the same step, rank 0 writes the
 * checkpoint, and the stage ends "interrupted" as a single-process stage would. A second Ctrl-C,
 * or ranks that do not stop within the grace period, get SIGTERM then SIGKILL. When a rank fails,
 * the others are stopped and the stage fails with that rank's last words.
 */
import { spawn, type ChildProcess } from "node:child_process"
import { availableParallelism } from "node:os"
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs"
import { join } from "node:path"
import { Effect } from "effect"
import { distGraceS } from "../util/env.ts"
import { writeJsonAtomic } from "../util/fs.ts"
import { StageError, type StageOptions, type StageSummary } from "./options.ts"
import { prepareStage } from "./run.ts"

/** Exit codes of a rank process. */
export const RANK_DONE = 0
export const RANK_INTERRUPTED = 130

/** Seconds a rank gets to finish its step and (rank 0) write the checkpoint after a stop request. */
const GRACE_S = distGraceS()

interface RankProc {
  readonly rank: number
  readonly child: ChildProcess
  readonly exited: Promise<number>
  tail(): string
}

const rankMain = join(import.meta.dir, "rank-main.ts")

function startRank(rank: number, n: number, stageFile: string, rendezvous: string, o: StageOptions): RankProc {
  const env: Record<string, string | undefined> = {
    ...process.env,
    BUNMIND_RANK: String(rank),
    BUNMIND_WORLD_SIZE: String(n),
    BUNMIND_LOCAL_RANK: String(rank),
    BUNMIND_DIST_BACKEND: o.parallel!.backend,
    BUNMIND_RENDEZVOUS: rendezvous,
  }
  // CPU ranks share the cores instead of each starting a thread per core.
  if (o.device === "cpu" && !process.env.RAYON_NUM_THREADS) env.RAYON_NUM_THREADS = String(Math.max(1, Math.floor(availableParallelism() / n)))
  const child = spawn(process.execPath, [rankMain, stageFile], { detached: true, stdio: ["ignore", "inherit", "pipe"], env })
  let tail = ""
  let partial = ""
  child.stderr!.on("data", (chunk: Buffer) => {
    const text = chunk.toString("utf8")
    tail = (tail + text).slice(-4000)
    if (rank === 0) {
      process.stderr.write(text)
      return
    }
    // Other ranks are quiet; whatever they do say is labelled.
    partial += text
    const lines = partial.split("\n")
    partial = lines.pop()!
    for (const l of lines) if (l.trim()) process.stderr.write(`[rank ${rank}] ${l}\n`)
  })
  const exited = new Promise<number>((res) => child.on("exit", (code, signal) => res(code ?? (signal ? 128 + (signal === "SIGKILL" ? 9 : 15) : 1))))
  return { rank, child, exited, tail: () => tail }
}

const signal = (r: RankProc, sig: NodeJS.Signals) => {
  if (r.child.exitCode === null && r.child.signalCode === null) {
    try {
      r.child.kill(sig)
    } catch {
      // already gone
    }
  }
}

const within = <T>(p: Promise<T>, ms: number): Promise<T | "timeout"> =>
  Promise.race([p, new Promise<"timeout">((res) => setTimeout(() => res("timeout"), ms).unref?.())])

/** Asks the ranks to stop after their current step; escalates when they do not. */
async function stopRanks(ranks: RankProc[]): Promise<void> {
  ranks.forEach((r) => signal(r, "SIGUSR1"))
  const all = Promise.all(ranks.map((r) => r.exited))
  if ((await within(all, GRACE_S * 1000)) !== "timeout") return
  process.stderr.write(`[dist] ranks did not stop within ${GRACE_S} s: terminating them\n`)
  ranks.forEach((r) => signal(r, "SIGTERM"))
  if ((await within(all, 10_000)) !== "timeout") return
  ranks.forEach((r) => signal(r, "SIGKILL"))
  await all
}

/** Runs `o` as `o.parallel.nproc` rank processes; returns rank 0's summary. */
export const launchStage = (o: StageOptions) =>
  Effect.gen(function* () {
    const { nproc: n, backend } = o.parallel!
    const prep = yield* prepareStage(o, n)
    const distDir = join(prep.stageDir, "dist")
    mkdirSync(distDir, { recursive: true })
    const rendezvous = join(distDir, "rendezvous")
    rmSync(rendezvous, { force: true })
    const stageFile = join(distDir, "stage.json")
    writeJsonAtomic(stageFile, { ...o, parallel: undefined, dist: undefined, stopAfter: undefined })
    if (!o.quiet) console.error(`[${o.stage}] data-parallel: ${n} ranks over ${backend}${o.device === "cpu" ? " on the CPU" : `, cuda:0..cuda:${n - 1}`}`)

    const ranks = yield* Effect.acquireRelease(
      Effect.sync(() => Array.from({ length: n }, (_, r) => startRank(r, n, stageFile, rendezvous, o))),
      (ranks) => Effect.promise(() => stopRanks(ranks).finally(() => rmSync(rendezvous, { force: true }))),
    )
    // A failed rank takes the others down (they would wait for it until their timeout).
    let failed: RankProc | undefined
    const codes = yield* Effect.promise(() =>
      Promise.all(
        ranks.map((r) =>
          r.exited.then((code) => {
            if (code !== RANK_DONE && code !== RANK_INTERRUPTED && !failed) {
              failed = r
              setTimeout(() => ranks.forEach((x) => signal(x, "SIGTERM")), 3000).unref?.()
            }
            return code
          }),
        ),
      ),
    )
    if (failed) {
      const code = codes[failed.rank]!
      const how = code > 128 ? `killed by signal ${code - 128}` : `exit ${code}`
      const last = failed.tail().trim().split("\n").slice(-8).join("\n")
      return yield* Effect.fail(new StageError({ stage: o.stage, message: `rank ${failed.rank} of ${n} failed (${how})${last ? `:\n${last}` : ""}` }))
    }
    const summaryFile = join(prep.stageDir, "summary.json")
    const summary = existsSync(summaryFile) ? (JSON.parse(readFileSync(summaryFile, "utf8")) as StageSummary) : undefined
    if (codes.some((c) => c === RANK_INTERRUPTED) || summary?.status === "interrupted") return yield* Effect.interrupt
    if (!summary) return yield* Effect.fail(new StageError({ stage: o.stage, message: `rank 0 finished without writing ${summaryFile}` }))
    return summary
  }).pipe(Effect.scoped)
