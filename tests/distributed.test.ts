/**
 * Data-parallel training (`--nproc N`) end to end on the CPU, through the `tcp` backend (the same
 * launcher, rendezvous, sharding, reduction and stop protocol as NCCL on GPUs; only the transport
 * differs):
 * - N ranks reproduce a single process's losses (a step is `--batch-size × --accum` sequences
 *   whatever N is), and only rank 0 writes;
 * - a run stopped on 2 ranks resumes on 4, then on 1, and still matches;
 * - Ctrl-C to the launcher stops every rank after the same step with a usable checkpoint;
 * - a rank that dies takes the job down with a message naming it, and the run resumes;
 * - the pipeline runs stages on N ranks, and the rank count is not part of a stage's identity.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { generateDemoData, writeDemoData } from "../src/demo/facts.ts"
import { cli, spawnCli, waitForMetrics } from "./helpers/cli.ts"

const out = join(import.meta.dir, ".out", "distributed")
const data = join(out, "data")
const tok = join(out, "tok")
const env = { RAYON_NUM_THREADS: "1" }

/** The pretrain command; `extra` flags with a value replace the defaults (`--resume` is added). */
const args = (run: string, extra: string[] = []) => {
  const base = [
    "train", "pretrain", "--run-dir", join(out, run), "--tokenizer", tok, "--data", join(data, "pretrain.jsonl"),
    "--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--accum", "2", "--steps", "12",
    "--lr", "3e-3", "--eval-every", "4", "--save-every", "5", "--seed", "7",
  ]
  const rest: string[] = []
  for (let i = 0; i < extra.length; i++) {
    const at = base.indexOf(extra[i]!)
    if (at >= 0 && extra[i + 1] !== undefined && !extra[i + 1]!.startsWith("--")) base[at + 1] = extra[++i]!
    else rest.push(extra[i]!)
  }
  return [...base, ...rest]
}
const tcp = (n: number) => ["--nproc", String(n), "--dist-backend", "tcp"]

type Line = { step: number; loss: number; tokens: number; eval_loss?: number }
const metrics = (run: string, stage = "pretrain") =>
  readFileSync(join(out, run, stage, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Line)
const summary = (run: string, stage = "pretrain") => JSON.parse(readFileSync(join(out, run, stage, "summary.json"), "utf8"))
const ckptStep = (run: string) => JSON.parse(readFileSync(join(out, run, "pretrain", "checkpoint", "trainer_state.json"), "utf8")).step as number

/** Same steps, same tokens; losses equal to `rel` (summation order is the only difference). */
const expectSameRun = (got: Line[], want: Line[], rel: number) => {
  expect(got.map((l) => l.step)).toEqual(want.map((l) => l.step))
  expect(got.map((l) => l.tokens)).toEqual(want.map((l) => l.tokens))
  got.forEach((l, i) => {
    expect(Math.abs(l.loss - want[i]!.loss)).toBeLessThanOrEqual(rel * want[i]!.loss)
    if (want[i]!.eval_loss !== undefined) expect(Math.abs(l.eval_loss! - want[i]!.eval_loss!)).toBeLessThanOrEqual(rel * want[i]!.eval_loss!)
  })
}

const spawn = (a: string[]) => spawnCli(a)
const waitForSteps = (run: string, n: number, proc: ReturnType<typeof spawn>) => waitForMetrics(join(out, run, "pretrain", "metrics.jsonl"), n, proc)

/** Rank processes of a run still alive (by their stage file). */
const liveRanks = (run: string) => {
  const ps = Bun.spawnSync(["ps", "-eo", "pid,args"]).stdout.toString()
  return ps.split("\n").filter((l) => l.includes("rank-main.ts") && l.includes(join(out, run)))
}

let reference: Line[]

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  writeDemoData(data, generateDemoData({ seed: 3, entities: 12, biosPerEntity: 4, echoChats: 8, chitchatRepeats: 1 }))
  const t = cli(["tokenizer", "train", "--data", join(data, "pretrain.jsonl"), join(data, "sft.jsonl"), "--vocab-size", "400", "--out", tok])
  if (t.code !== 0) throw new Error(t.stderr)
  const r = cli(args("single"), undefined, env)
  if (r.code !== 0) throw new Error(r.stderr)
  reference = metrics("single")
}, 120_000)

describe("--nproc N over the tcp backend", () => {
  test("2 and 4 ranks reproduce one process's losses, eval losses and token counts; only rank 0 writes", () => {
    expect(reference.length).toBe(12)
    const two = cli([...args("two"), ...tcp(2)])
    expect(two.code).toBe(0)
    expect(two.stderr).toContain("data-parallel: 2 ranks over tcp")
    expect(two.stderr).toContain("on 2 ranks (tcp)")
    // Each rank's share is exactly one of the single process's micro-batches: same sums, same bits.
    expectSameRun(metrics("two"), reference, 0)
    const s = summary("two")
    expect(s.status).toBe("done")
    expect(s.world_size).toBe(2)
    expect(s.dist_backend).toBe("tcp")
    // Rank 1 printed nothing of its own (no second progress bar, no labelled lines).
    expect(two.stderr).not.toContain("[rank 1]")

    const four = cli([...args("four"), ...tcp(4)])
    expect(four.code).toBe(0)
    // Four shares of 2 rows: the same rows, summed in another order.
    expectSameRun(metrics("four"), reference, 1e-6)
    // The published model is rank 0's, and a plain `generate` can load it.
    const g = cli(["generate", "--model", join(out, "four", "pretrain", "model"), "--prompt", "Ada", "--max-new-tokens", "4", "--temperature", "0"])
    expect(g.code).toBe(0)
  }, 120_000)

  test("stopped on 2 ranks, resumed on 4, then on 1: the loss sequence of an uninterrupted run", () => {
    const a = cli([...args("elastic"), ...tcp(2)], undefined, { BUNMIND_DIST_STOP_AT: "5" })
    expect(a.code).toBe(130)
    expect(a.stderr).toContain("interrupted at step 5/12")
    expect(summary("elastic").status).toBe("interrupted")
    expect(ckptStep("elastic")).toBe(5)
    expect(metrics("elastic").length).toBe(5)

    const b = cli([...args("elastic", ["--resume"]), ...tcp(4)], undefined, { BUNMIND_DIST_STOP_AT: "9" })
    expect(b.code).toBe(130)
    expect(b.stderr).toContain("resumed from")
    expect(ckptStep("elastic")).toBe(9)

    const c = cli(args("elastic", ["--resume"]), undefined, env)
    expect(c.code).toBe(0)
    expect(summary("elastic").status).toBe("done")
    expectSameRun(metrics("elastic"), reference, 1e-6)
  }, 120_000)

  test("Ctrl-C to the launcher: every rank stops after the same step and rank 0 saves it", async () => {
    const run = "sigint"
    const proc = spawn([...args(run, ["--steps", "100000", "--eval-every", "0", "--save-every", "100000"]), ...tcp(2)])
    await waitForSteps(run, 6, proc)
    expect(liveRanks(run).length).toBe(2)
    proc.kill("SIGINT")
    const code = await proc.exited
    const err = await new Response(proc.stderr).text()
    expect(code).toBe(130)
    expect(err).toContain("checkpoint saved")
    const s = summary(run)
    expect(s.status).toBe("interrupted")
    const m = metrics(run)
    // The checkpoint is the last logged step: nothing lost, nothing half-done.
    expect(ckptStep(run)).toBe(s.steps)
    expect(m[m.length - 1]!.step).toBe(s.steps)
    expect(s.steps).toBeGreaterThanOrEqual(6)
    expect(liveRanks(run)).toEqual([])
  }, 120_000)

  test("a rank that dies takes the job down, names itself, and the run resumes", async () => {
    const run = "killed"
    const proc = spawn([...args(run, ["--steps", "100000", "--eval-every", "0", "--save-every", "100000"]), ...tcp(2)])
    await waitForSteps(run, 4, proc)
    const pids = liveRanks(run).map((l) => Number(l.trim().split(/\s+/)[0]!))
    expect(pids.length).toBe(2)
    const rankOf = (pid: number) => /(?:^|\0)BUNMIND_RANK=(\d+)/.exec(readFileSync(`/proc/${pid}/environ`, "utf8"))![1]
    process.kill(pids.find((p) => rankOf(p) === "1")!, "SIGKILL")
    const code = await proc.exited
    const err = await new Response(proc.stderr).text()
    expect(code).toBe(1)
    expect(err).toMatch(/rank 1 of 2 failed \(killed by signal 9\)/)
    // Rank 0 saw its peer go and kept the last completed step.
    expect(err).toContain("closed the connection")
    const s = summary(run)
    expect(s.status).toBe("failed")
    expect(ckptStep(run)).toBe(s.steps)
    expect(liveRanks(run)).toEqual([])
    const resumed = cli([...args(run, ["--resume", "--steps", String(s.steps + 2), "--eval-every", "0"]), ...tcp(2)])
    expect(resumed.code).toBe(0)
    expect(summary(run).steps).toBe(s.steps + 2)
  }, 120_000)

  test("what cannot run is refused before any rank starts", () => {
    const odd = cli([...args("odd"), ...tcp(3)])
    expect(odd.code).toBe(1)
    expect(odd.stderr).toContain("--nproc 3 must divide the sequences of one optimizer step (--batch-size 4 × --accum 2 = 8)")
    expect(existsSync(join(out, "odd", "pretrain", "dist"))).toBe(false)
    const dev = cli([...args("dev"), ...tcp(2), "--device", "cuda:1"])
    expect(dev.code).toBe(1)
    expect(dev.stderr).toContain("ranks use cuda:0..cuda:1")
    // NCCL (the default) needs GPUs; the message says so and names the CPU alternative.
    const nccl = cli([...args("nccl"), "--nproc", "2"])
    expect(nccl.code).toBe(1)
    expect(nccl.stderr).toMatch(/NCCL/)
    expect(nccl.stderr).toContain("--dist-backend tcp")
  })
})

describe("pipeline with nproc", () => {
  test("pretrain → SFT → DPO on 2 ranks equals 1 rank, and a finished run is not redone on another rank count", () => {
    const cfg = (run: string, nproc: number) => {
      const file = join(out, `${run}.json`)
      writeFileSync(
        file,
        JSON.stringify({
          run: join(out, run),
          seed: 5,
          nproc,
          distBackend: "tcp",
          tokenizer: { path: tok },
          stages: [
            { stage: "pretrain", data: [join(data, "pretrain.jsonl")], preset: "tiny", steps: 6, batchSize: 4, accum: 2, seqLen: 48, lr: 3e-3, evalEvery: 3 },
            { stage: "sft", data: [join(data, "sft.jsonl")], steps: 4, batchSize: 4, accum: 2, seqLen: 48, lr: 1e-3, evalEvery: 2 },
            { stage: "dpo", data: [join(data, "dpo.jsonl")], steps: 3, batchSize: 2, accum: 2, seqLen: 48, lr: 1e-4, evalEvery: 3 },
          ],
        }),
      )
      return file
    }
    const one = cli(["pipeline", "run", cfg("pipe1", 1)], undefined, env)
    expect(one.code).toBe(0)
    const two = cli(["pipeline", "run", cfg("pipe2", 2)])
    expect(two.code).toBe(0)
    for (const stage of ["pretrain", "sft", "dpo"]) {
      expectSameRun(metrics("pipe2", stage), metrics("pipe1", stage), 1e-6)
      expect(summary("pipe2", stage).world_size).toBe(2)
    }
    // The same config on 1 rank: every stage is already done.
    const again = cli(["pipeline", "run", cfg("pipe2", 1)], undefined, env)
    expect(again.code).toBe(0)
    expect(again.stdout.match(/skipped \(done\)/g)?.length).toBe(3)
  }, 240_000)
})
