/**
 * Resumability of the training loop, as a user would hit it:
 * - SIGINT mid-run ends the current step, writes a checkpoint and exits; `--resume` continues and
 *   the loss sequence equals an uninterrupted run's, step for step;
 * - kill -9 at arbitrary moments (including during checkpoint writes) never leaves an unloadable
 *   checkpoint: the next `--resume` always starts.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { cli, shared, spawnCli, waitForMetrics } from "./helpers/cli.ts"

const out = join(import.meta.dir, ".out", "train-resume")
const tokenizer = join(out, "tok")
const corpus = join(out, "corpus.jsonl")

const args = (run: string, extra: string[] = []) => [
  "train", "pretrain", "--run-dir", join(out, run), "--tokenizer", tokenizer, "--data", corpus,
  "--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--accum", "2", "--steps", "24",
  "--lr", "3e-3", "--eval-every", "8", "--seed", "7", ...(extra.includes("--save-every") ? [] : ["--save-every", "5"]), ...extra,
]

const losses = (run: string) =>
  readFileSync(join(out, run, "pretrain", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { step: number; loss: number })

const spawn = (a: string[]) => spawnCli(a, { RAYON_NUM_THREADS: "1" })
const waitForSteps = (run: string, n: number, proc: ReturnType<typeof spawn>) => waitForMetrics(join(out, run, "pretrain", "metrics.jsonl"), n, proc)

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  const lines: string[] = []
  for (let i = 0; i < 200; i++) lines.push(JSON.stringify({ text: `story ${i}: the ${["cat", "dog", "fox"][i % 3]} ran ${i % 7} times around the ${["tree", "house"][i % 2]}.` }))
  writeFileSync(corpus, lines.join("\n") + "\n")
  const t = cli(["tokenizer", "train", "--data", `${shared}/corpora/tinystories_sample.txt`, "--vocab-size", "6400", "--out", tokenizer])
  if (t.code !== 0) throw new Error(t.stderr)
})

describe("interrupt and resume", () => {
  test("SIGINT mid-run then --resume reproduces the uninterrupted loss sequence", async () => {
    const straight = cli(args("straight"), undefined, { RAYON_NUM_THREADS: "1" })
    expect(straight.code).toBe(0)
    const want = losses("straight")
    expect(want.map((l) => l.step)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1))

    const proc = spawn(args("interrupted"))
    await waitForSteps("interrupted", 9, proc)
    proc.kill("SIGINT")
    const code = await proc.exited
    const err = await new Response(proc.stderr).text()
    expect(code).not.toBe(0)
    expect(err).toContain("interrupted at step")
    expect(err).toContain("checkpoint saved")
    const summary = JSON.parse(readFileSync(join(out, "interrupted", "pretrain", "summary.json"), "utf8"))
    expect(summary.status).toBe("interrupted")
    const stoppedAt = summary.steps as number
    expect(stoppedAt).toBeGreaterThanOrEqual(9)
    expect(stoppedAt).toBeLessThan(24)

    // Without --resume the existing checkpoint is protected.
    const refused = cli(args("interrupted"))
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain("--resume")

    const resumed = cli(args("interrupted", ["--resume"]), undefined, { RAYON_NUM_THREADS: "1" })
    expect(resumed.code).toBe(0)
    expect(resumed.stderr).toContain(`resumed from`)
    const got = losses("interrupted")
    expect(got.map((l) => l.step)).toEqual(want.map((l) => l.step))
    expect(got.map((l) => l.loss)).toEqual(want.map((l) => l.loss))
  }, 300_000)

  test("kill -9 at random moments never leaves an unloadable checkpoint", async () => {
    const run = "killed"
    const extra = ["--save-every", "1"]
    let killedAt = 0
    for (const delay of [900, 1300, 1700]) {
      const proc = spawn(args(run, killedAt ? [...extra, "--resume"] : extra))
      await Bun.sleep(delay)
      proc.kill("SIGKILL")
      await proc.exited
      killedAt++
    }
    const r = cli(args(run, [...extra, "--resume"]), undefined, { RAYON_NUM_THREADS: "1" })
    if (r.code !== 0) console.error(r.stderr)
    expect(r.stderr).not.toContain("corrupt")
    expect(r.code).toBe(0)
    const summary = JSON.parse(readFileSync(join(out, run, "pretrain", "summary.json"), "utf8"))
    expect(summary.status).toBe("done")
    expect(summary.steps).toBe(24)
  }, 300_000)
})
