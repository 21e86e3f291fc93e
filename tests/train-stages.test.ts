/**
 * The stages through the CLI, on small generated data: SFT from a pretrained model, LoRA (merged
 * weights = base + adapter), DPO (loss falls on the preference pairs), distillation (KL to the
 * teacher falls), bad-record policies, and the pipeline runner skipping finished stages and
 * resuming an interrupted one.
 */
import { beforeAll, describe, expect, test } from "bun:test"
import { mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs"
import { join } from "node:path"
import { generateDemoData, writeDemoData } from "../src/demo/facts.ts"
import { Effect } from "effect"
import { openShards } from "../src/data/index.ts"
import { openModelSync, type Model } from "../src/model/model.ts"
import { checkConfig, stageOptionsFor } from "../src/pipeline/pipeline.ts"
import { stepBatch } from "../src/train/index.ts"
import { cli } from "./helpers/cli.ts"

const out = join(import.meta.dir, ".out", "train-stages")
const run = join(out, "run")
const data = join(out, "data")
const env = { RAYON_NUM_THREADS: "1" }
const common = ["--run-dir", run, "--seq-len", "64", "--eval-every", "5", "--save-every", "50"]
const metrics = (stage: string) =>
  readFileSync(join(run, stage, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, number>)

beforeAll(() => {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  writeDemoData(data, generateDemoData({ seed: 1, entities: 16, biosPerEntity: 4, echoChats: 20, chitchatRepeats: 1 }))
  const t = cli(["tokenizer", "train", "--data", join(data, "pretrain.jsonl"), join(data, "sft.jsonl"), "--vocab-size", "500", "--out", join(run, "tokenizer")])
  if (t.code !== 0) throw new Error(t.stderr)
  const p = cli(["train", "pretrain", ...common, "--data", join(data, "pretrain.jsonl"), "--preset", "tiny", "--steps", "12", "--batch-size", "8", "--lr", "3e-3"], undefined, env)
  if (p.code !== 0) throw new Error(p.stderr)
})

describe("training stages", () => {
  test("pretrain published a model, metrics and a summary", () => {
    const s = JSON.parse(readFileSync(join(run, "pretrain", "summary.json"), "utf8"))
    expect(s.status).toBe("done")
    expect(s.steps).toBe(12)
    const m = metrics("pretrain")
    expect(m.length).toBe(12)
    expect(m[11]!.loss).toBeLessThan(m[0]!.loss)
    expect(m.some((l) => typeof l.eval_loss === "number")).toBe(true)
    expect(existsSync(join(run, "pretrain", "model", "tokenizer.json"))).toBe(true)
  })

  test("SFT starts from the pretrained model and lowers its loss on assistant spans", () => {
    const r = cli(["train", "sft", ...common, "--data", join(data, "sft.jsonl"), "--steps", "10", "--batch-size", "8", "--lr", "2e-3"], undefined, env)
    expect(r.code).toBe(0)
    const cfg = JSON.parse(readFileSync(join(run, "sft", "config.json"), "utf8"))
    expect(cfg.init.model).toBe(join(run, "pretrain", "model"))
    const m = metrics("sft")
    expect(m[9]!.loss).toBeLessThan(m[0]!.loss)
  })

  test("LoRA trains adapters only; merged weights give the logits of base + adapter", () => {
    const r = cli(["train", "lora", ...common, "--data", join(data, "sft.jsonl"), "--steps", "8", "--batch-size", "8", "--lr", "5e-3", "--rank", "4", "--targets", "q_proj,o_proj,gate_proj"], undefined, env)
    expect(r.code).toBe(0)
    const s = JSON.parse(readFileSync(join(run, "lora", "summary.json"), "utf8"))
    expect(s.trainable_params).toBeLessThan(s.params / 10)
    const merged = cli(["lora", "merge", "--model", join(run, "sft", "model"), "--adapter", join(run, "lora", "adapter"), "--out", join(out, "merged")])
    expect(merged.code).toBe(0)
    const ids = [1, 5, 9, 30, 31, 77]
    const base = openModelSync(join(run, "sft", "model"))
    const plain = base.forward(ids)
    base.loadLora(join(run, "lora", "adapter"), false)
    const withAdapter = base.forward(ids)
    const m = openModelSync(join(out, "merged"))
    const fromMerged = m.forward(ids)
    const maxDiff = (a: Float32Array, b: Float32Array) => Math.max(...Array.from(a, (x, i) => Math.abs(x - b[i]!)))
    expect(maxDiff(withAdapter, fromMerged)).toBeLessThan(1e-4)
    expect(maxDiff(plain, withAdapter)).toBeGreaterThan(1e-3) // the adapter did something
    // The stage's published model is the merged one too (not the base).
    const published = openModelSync(join(run, "lora", "model"))
    expect(maxDiff(withAdapter, published.forward(ids))).toBeLessThan(1e-4)
    base.free()
    m.free()
    published.free()
  })

  test("DPO lowers the DPO loss on its preference pairs (recomputed independently)", async () => {
    const r = cli(["train", "dpo", ...common, "--data", join(data, "dpo.jsonl"), "--steps", "30", "--batch-size", "8", "--lr", "1e-3", "--beta", "0.5", "--eval-fraction", "0"], undefined, env)
    expect(r.code).toBe(0)
    const m = metrics("dpo")
    expect(m[0]!.loss).toBeCloseTo(Math.LN2, 3) // policy = reference at the start
    // Recompute −log σ(β·((πc − πr) − (rc − rr))) over the pairs from the published models.
    const shards = await Effect.runPromise(openShards(join(run, "dpo", "data")))
    const policy = openModelSync(join(run, "dpo", "model"))
    const reference = openModelSync(join(run, "sft", "model"))
    const lp = (model: Model, b: { ids: Uint32Array; targets: Uint32Array; mask: Float32Array }) => -model.loss(b.ids, b.targets, b.mask, 1).sum
    let loss = 0
    let wins = 0
    const n = Math.min(48, shards.numSamples)
    for (let i = 0; i < n; i++) {
      const { chosen, rejected } = shards.getPairBatch([i], 64)
      const z = 0.5 * (lp(policy, chosen) - lp(policy, rejected) - (lp(reference, chosen) - lp(reference, rejected)))
      loss += Math.log1p(Math.exp(-Math.abs(z))) + Math.max(-z, 0)
      if (z > 0) wins++
    }
    policy.free()
    reference.free()
    expect(loss / n).toBeLessThan(Math.LN2 - 0.03)
    expect(wins / n).toBeGreaterThan(0.5)
  })

  test("a step's rows are filled once, into one buffer; DPO: each micro-batch's chosen rows, then its rejected rows", async () => {
    const cat = (bs: { ids: Uint32Array; targets: Uint32Array; mask: Float32Array }[], k: "ids" | "targets" | "mask") => bs.flatMap((b) => Array.from(b[k]))
    const pairs = await Effect.runPromise(openShards(join(run, "dpo", "data")))
    const micro = [[0, 3], [5]]
    const dpo = stepBatch(pairs, { stage: "dpo", seqLen: 64 }, micro)
    expect(dpo.rows).toEqual([4, 2])
    const want = micro.flatMap((m) => {
      const { chosen, rejected } = pairs.getPairBatch(m, 64)
      return [chosen, rejected]
    })
    for (const k of ["ids", "targets", "mask"] as const) expect(Array.from(dpo.batch[k])).toEqual(cat(want, k))
    const seqs = await Effect.runPromise(openShards(join(run, "sft", "data")))
    const sft = stepBatch(seqs, { stage: "sft", seqLen: 64 }, [[1, 2], [7]])
    expect(sft.rows).toEqual([2, 1])
    for (const k of ["ids", "targets", "mask"] as const) expect(Array.from(sft.batch[k])).toEqual(Array.from(seqs.getBatch([1, 2, 7], 64)[k]))
  })

  test("distillation pulls the student toward the teacher (KL falls)", () => {
    const r = cli(
      ["train", "distill", ...common, "--data", join(data, "sft.jsonl"), "--init", join(run, "pretrain", "model"), "--teacher", join(run, "sft", "model"), "--steps", "10", "--batch-size", "8", "--lr", "3e-3", "--alpha", "0"],
      undefined,
      env,
    )
    expect(r.code).toBe(0)
    const m = metrics("distill")
    expect(m[m.length - 1]!.kl).toBeLessThan(m[0]!.kl! * 0.8)
  })

  test("bad records: skip reports file:line and counts; fail stops naming file:line", () => {
    const bad = join(out, "bad-sft.jsonl")
    const good = readFileSync(join(data, "sft.jsonl"), "utf8").trim().split("\n").slice(0, 40)
    const lines = [...good.slice(0, 10), "{not json", JSON.stringify({ conversations: [{ role: "bot", content: "hi" }] }), JSON.stringify({ conversations: [] }), ...good.slice(10)]
    writeFileSync(bad, lines.join("\n") + "\n")
    const skip = cli(["train", "sft", "--run-dir", join(out, "bad-skip"), "--tokenizer", join(run, "tokenizer"), "--init", join(run, "pretrain", "model"), "--data", bad, "--steps", "2", "--batch-size", "4", "--seq-len", "64", "--on-bad-record", "skip"], undefined, env)
    expect(skip.code).toBe(0)
    expect(skip.stderr).toContain("bad-sft.jsonl:11")
    expect(skip.stderr).toContain("bad-sft.jsonl:12")
    expect(skip.stderr).toMatch(/\b3 records skipped/)
    const fail = cli(["train", "sft", "--run-dir", join(out, "bad-fail"), "--tokenizer", join(run, "tokenizer"), "--init", join(run, "pretrain", "model"), "--data", bad, "--steps", "2", "--batch-size", "4", "--seq-len", "64", "--on-bad-record", "fail"], undefined, env)
    expect(fail.code).toBe(1)
    expect(fail.stderr).toContain("bad-sft.jsonl:11")
    // Nothing already trained is lost: the pretrained model is untouched.
    expect(existsSync(join(run, "pretrain", "model", "model.safetensors"))).toBe(true)
  })

  test("samples with no assistant token within --seq-len: kept and counted in summary.json (as upstream); --skip-unlabeled drops them", () => {
    const file = join(out, "unlabeled-sft.jsonl")
    const good = readFileSync(join(data, "sft.jsonl"), "utf8").trim().split("\n").slice(0, 40)
    const long = (i: number) => JSON.stringify({ conversations: [{ role: "user", content: `question ${i}: ${"tell me everything about the city ".repeat(12)}` }, { role: "assistant", content: "ok" }] })
    writeFileSync(file, [...good.slice(0, 5), long(1), ...good.slice(5, 20), long(2), ...good.slice(20)].join("\n") + "\n")
    const args = (dir: string, ...more: string[]) =>
      ["train", "sft", "--run-dir", join(out, dir), "--tokenizer", join(run, "tokenizer"), "--init", join(run, "pretrain", "model"), "--data", file, "--batch-size", "4", "--seq-len", "64", "--eval-fraction", "0", ...more]
    const summary = (dir: string) => JSON.parse(readFileSync(join(out, dir, "sft", "summary.json"), "utf8"))

    const keep = cli(args("unlabeled-keep", "--steps", "2"), undefined, env)
    expect(keep.code).toBe(0)
    expect(keep.stderr).toMatch(/\b0 records skipped/)
    expect(keep.stderr).toContain("; 2 samples without a loss token kept (as upstream; --skip-unlabeled drops them)")
    expect(keep.stderr).toContain("unlabeled-sft.jsonl:6: ")
    expect(summary("unlabeled-keep")).toMatchObject({ status: "done", skipped_records: 0, unlabeled_samples: 2 })
    const shards = Effect.runSync(openShards(join(out, "unlabeled-keep", "sft", "data")))
    expect([shards.numSamples, shards.index.unlabeled]).toEqual([42, 2])
    // resuming reuses the prepared shards: the counts still reach summary.json
    const resumed = cli(args("unlabeled-keep", "--steps", "3", "--resume"), undefined, env)
    expect(resumed.code).toBe(0)
    expect(resumed.stderr).not.toContain("without a loss token")
    expect(summary("unlabeled-keep")).toMatchObject({ status: "done", steps: 3, skipped_records: 0, unlabeled_samples: 2 })

    const skip = cli(args("unlabeled-skip", "--steps", "2", "--skip-unlabeled"), undefined, env)
    expect(skip.code).toBe(0)
    expect(skip.stderr).toContain("unlabeled-sft.jsonl:6: no assistant tokens within max_len 64")
    expect(skip.stderr).toMatch(/\b2 records skipped, \d+ warnings?; 2 samples without a loss token skipped \(--skip-unlabeled\)/)
    expect(summary("unlabeled-skip")).toMatchObject({ status: "done", skipped_records: 2, unlabeled_samples: 2 })
    expect(Effect.runSync(openShards(join(out, "unlabeled-skip", "sft", "data"))).numSamples).toBe(40)

    const prep = (name: string, ...more: string[]) =>
      cli(["data", "prepare", "--input", file, "--tokenizer", join(run, "tokenizer"), "--kind", "sft", "--out", join(out, name), "--max-len", "65", ...more])
    const p1 = prep("prep-keep")
    expect(p1.code).toBe(0)
    expect(p1.stdout).toContain("42 samples")
    expect(p1.stdout).toContain("2 samples without a loss token kept")
    const p2 = prep("prep-skip", "--skip-unlabeled")
    expect(p2.code).toBe(0)
    expect(p2.stdout).toContain("40 samples")
    expect(p2.stdout).toContain("2 samples without a loss token skipped (--skip-unlabeled)")
  })

  test("pipeline stage key skipUnlabeled: checked, passed to the stage only when set (finished stages of older configs keep their hash)", () => {
    const base = { run: "/tmp/x", stages: [{ stage: "sft", data: ["a.jsonl"] }] }
    expect(() => checkConfig({ ...base, stages: [{ stage: "sft", data: ["a.jsonl"], skipUnlabeled: "yes" }] })).toThrow("stages[0].skipUnlabeled: expected true or false")
    const on = checkConfig({ ...base, stages: [{ stage: "sft", data: ["a.jsonl"], skipUnlabeled: true }] })
    expect(stageOptionsFor(on, on.stages[0]!, "pretrain", "/tmp/tok", 500).skipUnlabeled).toBe(true)
    const off = checkConfig(base)
    expect("skipUnlabeled" in stageOptionsFor(off, off.stages[0]!, "pretrain", "/tmp/tok", 500)).toBe(false)
  })

  test("pipeline run skips finished stages; a stage stopped mid-way resumes to an uninterrupted run's losses", () => {
    const cfg = (dir: string) => ({
      run: join(out, dir),
      tokenizer: { data: [join(data, "pretrain.jsonl")], vocab_size: 400 },
      stages: [
        { stage: "pretrain", data: [join(data, "pretrain.jsonl")], preset: "tiny", steps: 4, batchSize: 4, seqLen: 48, evalFraction: 0 },
        { stage: "sft", data: [join(data, "sft.jsonl")], steps: 8, batchSize: 4, seqLen: 64, evalFraction: 0, lr: 1e-3, saveEvery: 3 },
      ],
    })
    writeFileSync(join(out, "pipe.json"), JSON.stringify(cfg("pipe")))
    const first = cli(["pipeline", "run", join(out, "pipe.json")], undefined, env)
    expect(first.code).toBe(0)
    expect(first.stdout).toContain("pretrain: done")
    expect(first.stdout).toContain("sft: done, 8 steps")
    expect(existsSync(join(out, "pipe", "report.html"))).toBe(true)
    const second = cli(["pipeline", "run", join(out, "pipe.json")], undefined, env)
    expect(second.code).toBe(0)
    expect(second.stdout).toContain("pretrain: skipped (done)")
    expect(second.stdout).toContain("sft: skipped (done)")
    const bad = cli(["pipeline", "run", join(out, "nope.json")])
    expect(bad.code).toBe(1)
    writeFileSync(join(out, "bad.json"), JSON.stringify({ run: "x", stages: [{ stage: "pretrian", data: ["a"] }] }))
    const wrong = cli(["pipeline", "run", join(out, "bad.json")])
    expect(wrong.code).toBe(1)
    expect(wrong.stderr).toContain("stages[0].stage")

    // The same config in another run directory, stopped after SFT step 5 (on 2 CPU ranks, whose
    // launcher has the stop hook; the rank count is not part of a stage's identity), then resumed
    // by a plain rerun: pretrain is skipped, SFT continues from its checkpoint.
    const metricsOf = (dir: string, stage: string) =>
      readFileSync(join(out, dir, stage, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { step: number; loss: number; lr: number })
    writeFileSync(join(out, "pipe-resume.json"), JSON.stringify(cfg("pipe-resume")))
    const stopped = cli(["pipeline", "run", join(out, "pipe-resume.json"), "--nproc", "2", "--dist-backend", "tcp"], undefined, { ...env, BUNMIND_DIST_STOP_AT: "5" })
    expect(stopped.code).toBe(130)
    expect(stopped.stderr).toContain("interrupted at step 5/8")
    expect(JSON.parse(readFileSync(join(out, "pipe-resume", "sft", "summary.json"), "utf8")).status).toBe("interrupted")
    expect(metricsOf("pipe-resume", "sft").map((m) => m.step)).toEqual([1, 2, 3, 4, 5])
    const resumed = cli(["pipeline", "run", join(out, "pipe-resume.json")], undefined, env)
    expect(resumed.code).toBe(0)
    expect(resumed.stdout).toContain("pretrain: skipped (done)")
    expect(resumed.stdout).toContain("sft: done, 8 steps")
    expect(resumed.stderr).toContain("resumed from")
    const want = metricsOf("pipe", "sft")
    const got = metricsOf("pipe-resume", "sft")
    expect(got.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
    expect(want.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
    for (let i = 0; i < 8; i++) {
      expect(Math.abs(got[i]!.loss - want[i]!.loss), `sft step ${i + 1} loss`).toBeLessThan(1e-5)
      expect(got[i]!.lr).toBeCloseTo(want[i]!.lr, 12)
    }
  })
})
