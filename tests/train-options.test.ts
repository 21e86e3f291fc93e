/**
 * Stage options: one resolver (resolveStageOptions) behind `bunmind train <stage>` and pipelines,
 * with the defaults of stages.ts and one set of value checks; pipeline stage hashes unchanged;
 * one run.json writer and shape.
 */
import { describe, expect, test } from "bun:test"
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { checkConfig, stageHash, stageOptionsFor } from "../src/pipeline/pipeline.ts"
import { recordRun, resolveStageOptions, RUN_DEFAULTS, SettingError, STAGE_DEFAULTS, STAGES } from "../src/train/index.ts"
import { metricLine } from "../src/train/run.ts"
import type { StepResult } from "../src/model/trainer.ts"
import { cli } from "./helpers/cli.ts"

const out = join(import.meta.dir, ".out", "train-options")

/** Stage hashes of these configs as the code before resolveStageOptions computed them (a979c57). */
const BEFORE: [unknown, string[]][] = [
  [
    { run: "/tmp/r", stages: [{ stage: "pretrain", data: ["/d/p.jsonl"], preset: "tiny", steps: 4, batchSize: 4, seqLen: 48, evalFraction: 0 }, { stage: "sft", data: ["/d/s.jsonl"], steps: 3, batchSize: 4, seqLen: 64, evalFraction: 0, lr: 1e-3 }] },
    ["7b56396ee2afacf6", "caf838136e996fc7"],
  ],
  [
    {
      run: "/tmp/r2",
      seed: 7,
      device: "cpu",
      precision: "auto",
      stages: [
        { stage: "pretrain", data: ["/d/p.jsonl"] },
        { stage: "lora", data: ["/d/s.jsonl"], lora: { r: 4 } },
        { stage: "dpo", data: ["/d/d.jsonl"], beta: 0.3, decayNorms: false, dropLast: true },
        { stage: "distill", data: ["/d/s.jsonl"], teacher: "/m/t", alpha: 0.2, gradClip: 0, skipUnlabeled: true, accumMean: "micro", randomSystemPrompt: 0.2 },
      ],
    },
    ["cb3271d84e870cc5", "5cd9cb5e2f01a14d", "40a11ebcf8eef8bf", "dec153e00c180f61"],
  ],
  [
    {
      run: "/tmp/r3",
      nproc: 2,
      distBackend: "tcp",
      stages: [
        { stage: "sft", data: ["/d/s.jsonl"], init: "/m/base", warmup: 3, weightDecay: 0.1, overrides: { hidden_size: 64 }, evalEvery: 0, saveEvery: 0, pack: true },
        { stage: "lora", data: ["/d/s.jsonl"], lora: { r: 8, lora_alpha: 32, lora_dropout: 0.1, target_modules: ["q_proj"] } },
      ],
    },
    ["ccdd9a9c5d1b80e8", "ffc8fa70d3e1469c"],
  ],
]

const hashes = (raw: unknown) => {
  const cfg = checkConfig(structuredClone(raw))
  let previous: string | undefined
  return cfg.stages.map((s) => {
    const h = stageHash({ ...stageOptionsFor(cfg, s, previous, "/tmp/tok", 500), quiet: true })
    previous = s.stage
    return h
  })
}

const base = { data: ["a.jsonl"], tokenizer: "/tmp/tok", init: { model: "/m" } }

describe("resolveStageOptions", () => {
  test("pipeline stage hashes are those of the code before it (finished stages stay finished)", () => {
    for (const [cfg, want] of BEFORE) expect(hashes(cfg)).toEqual(want)
    // and a changed setting changes the hash
    const [cfg] = BEFORE[0]!
    const changed = structuredClone(cfg) as { stages: { lr?: number }[] }
    changed.stages[1]!.lr = 2e-3
    expect(hashes(changed)[1]).not.toBe(BEFORE[0]![1][1])
  })

  test("defaults come from the stage table and RUN_DEFAULTS", () => {
    for (const stage of ["pretrain", "sft", "lora", "dpo", "distill"] as const) {
      const o = resolveStageOptions(stage, "/r", base)
      const d = STAGES[stage].defaults
      expect([o.seqLen, o.batchSize, o.accum, o.epochs, o.lr, o.weightDecay, o.gradClip, o.minLrRatio]).toEqual([d.seqLen, d.batchSize, d.accum, d.epochs, d.lr, d.weightDecay, d.gradClip, d.minLrRatio])
      expect(o.objective).toEqual(d.objective)
      expect([o.seed, o.evalEvery, o.evalBatches, o.evalFraction, o.saveEvery, o.warmupSteps]).toEqual([RUN_DEFAULTS.seed, RUN_DEFAULTS.evalEvery, RUN_DEFAULTS.evalBatches, RUN_DEFAULTS.evalFraction, RUN_DEFAULTS.saveEvery, RUN_DEFAULTS.warmupSteps])
      expect("lora" in o).toBe(stage === "lora")
    }
    expect(STAGE_DEFAULTS.dpo.objective).toEqual({ kind: "dpo", beta: 0.15 })
    expect(resolveStageOptions("lora", "/r", { ...base, lora: { r: 4 } }).lora).toEqual({ r: 4, lora_alpha: 4, lora_dropout: 0, target_modules: ["square"] })
    expect(resolveStageOptions("distill", "/r", { ...base, alpha: 0.2 }).objective).toEqual({ kind: "distill", alpha: 0.2, temperature: 1.5 })
    expect(resolveStageOptions("sft", "/r", { ...base, gradClip: 0 }).gradClip).toBeNull()
  })

  test("one set of value checks: the pipeline rejects what the CLI rejects (batch size 0 included)", () => {
    const bad = (s: object) => {
      try {
        resolveStageOptions("sft", "/r", { ...base, ...s })
      } catch (e) {
        return e instanceof SettingError ? `${e.field}: ${e.message}` : String(e)
      }
      return "accepted"
    }
    expect(bad({ batchSize: 0 })).toBe("batchSize: expected a positive integer, got 0")
    expect(bad({ steps: 0 })).toContain("steps: expected a positive integer")
    expect(bad({ accum: 1.5 })).toContain("accum: expected a positive integer")
    expect(bad({ lr: 0 })).toContain("lr: expected > 0")
    expect(bad({ evalFraction: 1 })).toContain("evalFraction")
    expect(bad({ lora: { r: 0 } })).toContain("lora.r: expected a positive integer")
    expect(bad({ beta: -1 })).toContain("beta: expected > 0")
    expect(bad({ batchSize: 3, lr: 1e-3 })).toBe("accepted")
    const cfg = { run: "/tmp/x", stages: [{ stage: "sft", data: ["a.jsonl"], batchSize: 0 }] }
    expect(() => checkConfig(cfg)).toThrow("stages[0].batchSize: expected a positive integer, got 0")
    expect(() => checkConfig({ ...cfg, stages: [{ stage: "sft", data: ["a.jsonl"], randomSystemPrompt: 2 }] })).toThrow("stages[0].randomSystemPrompt: expected between 0 and 1")
    expect(() => checkConfig({ ...cfg, nproc: 0, stages: [{ stage: "sft", data: ["a.jsonl"] }] })).toThrow("pipeline config: nproc: expected a positive integer, got 0")
  })

  test("the CLI rejects --batch-size 0 with the flag's name", () => {
    rmSync(out, { recursive: true, force: true })
    mkdirSync(out, { recursive: true })
    writeFileSync(join(out, "a.jsonl"), '{"text": "hi"}\n')
    const r = cli(["train", "sft", "--run-dir", join(out, "run"), "--tokenizer", join(import.meta.dir, "fixtures", "tokenizer", "minimind_parity.json"), "--data", join(out, "a.jsonl"), "--init", join(out, "no-model"), "--batch-size", "0"])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("--batch-size: expected a positive integer, got 0")
  })
})

describe("run.json", () => {
  test("one writer, one shape: stages in order, each stage's options, the pipeline config; atomic", () => {
    const dir = join(out, "record")
    rmSync(dir, { recursive: true, force: true })
    const a = recordRun(dir, { stage: { name: "pretrain", options: { lr: 1 } } })
    expect(Object.keys(a)).toEqual(["name", "created", "command", "stages", "config"])
    expect(a).toMatchObject({ name: "record", stages: ["pretrain"], config: { pretrain: { lr: 1 } } })
    const b = recordRun(dir, { stage: { name: "sft", options: { lr: 2 } } })
    recordRun(dir, { stage: { name: "pretrain", options: { lr: 3 } } })
    const c = JSON.parse(readFileSync(join(dir, "run.json"), "utf8"))
    expect(c).toMatchObject({ created: a.created, stages: ["pretrain", "sft"], config: { pretrain: { lr: 3 }, sft: { lr: 2 } } })
    expect(b.created).toBe(a.created)
    const p = recordRun(dir, { stages: ["sft", "dpo"], pipeline: { run: dir } })
    expect(p).toMatchObject({ stages: ["sft", "dpo"], config: { pretrain: { lr: 3 } }, pipeline: { run: dir } })
    expect(readdirSync(dir)).toEqual(["run.json"])
    expect(existsSync(join(dir, "run.json"))).toBe(true)
  })
})

describe("metrics line", () => {
  const state = { step: 3, tokens: 600, sampler: { epoch: 0 } } as Parameters<typeof metricLine>[0]
  const result: StepResult = { step: 3, loss: 2.5, grad_norm: 1.25, lr: 1e-3, tokens: 200, applied: true, aux_loss: 0, world_size: 1 }

  test("carries step_path when the native step reports it, and has no such key when it does not", () => {
    const withPath = metricLine(state, { ...result, step_path: "handwritten" }, 1e-3, 2)
    expect(withPath).toMatchObject({ step: 3, epoch: 0, loss: 2.5, lr: 1e-3, grad_norm: 1.25, tokens: 200, tokens_per_s: 300, elapsed_s: 2, step_path: "handwritten" })
    const without = metricLine(state, result, 1e-3, 2)
    expect("step_path" in without).toBe(false)
    expect(Object.keys(without)).toEqual(["step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"])
  })
})
