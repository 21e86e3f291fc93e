/**
 * Pipeline suite (issue 4): what the Effect stage loop costs on top of the native training step,
 * and how fast batches come out of the memory-mapped shards.
 *   - steps/s of `runStage` (pretrain: sampler, shards, native step, metrics line, progress,
 *     scoped handles) against the same steps in a bare loop (sampler → getBatch → trainer.step),
 *     same model, data, batch and seed, samples interleaved; overhead = bare / pipeline − 1.
 *     Both clocks run from the end of the first step to the end of the last (steady state; the
 *     first step's one-off warm-up is not a per-step cost of either loop);
 *   - shard reading: random batches from `getBatch`, in tokens/s and MB/s of token ids read.
 *   bun bench/pipeline.ts [--quick]
 */
import { mkdirSync, readFileSync, rmSync } from "node:fs"
import { join } from "node:path"
import { Effect } from "effect"
import { BatchSampler, openShards, prepareShards } from "../src/data/index.ts"
import { generateDemoData, writeDemoData } from "../src/demo/facts.ts"
import { initModelSync } from "../src/model/model.ts"
import { openTrainerSync } from "../src/model/trainer.ts"
import { trainTokenizer } from "../src/tokenizer/train.ts"
import { runStage, splitIndices, type StageOptions } from "../src/train/index.ts"
import { benchRoot, stats, writeReport, type Row } from "./lib/report.ts"

// The demo's model and pretraining batch (16 × 128): the stage overhead is a fixed cost per step,
// so it is measured against a step of the size people actually run (see the per-step ms too).
const MODEL = { preset: "tiny", hidden_size: 128, num_hidden_layers: 4, intermediate_size: 384, num_attention_heads: 4, num_key_value_heads: 2 }

export async function pipelineSuite(quick = false): Promise<Row[]> {
  const b = 16
  const t = 128
  const dir = join(benchRoot, "reports", "tmp", "pipeline")
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const data = generateDemoData({ seed: 3, entities: 24, biosPerEntity: 8, echoChats: 10 })
  writeDemoData(join(dir, "data"), data)
  const corpus = join(dir, "data", "pretrain.jsonl")
  const tokDir = join(dir, "tokenizer")
  const vocab = await Effect.runPromise(
    trainTokenizer({ files: [corpus], vocabSize: 800, out: tokDir }).pipe(Effect.map((t) => t.vocabSize), Effect.scoped),
  )
  const shardDir = join(dir, "shards")
  await Effect.runPromise(prepareShards({ input: corpus, tokenizer: tokDir, kind: "pretrain", outDir: shardDir, maxLen: t + 1, pack: true, log: false }))
  const shards = await Effect.runPromise(openShards(shardDir))

  const steps = quick ? 8 : 30
  const seed = 5
  const split = splitIndices(shards.numSamples, 0, seed)

  const bare = (): number => {
    const model = initModelSync({ ...MODEL, vocab_size: vocab }, seed)
    const trainer = openTrainerSync(model, { seed })
    const sampler = new BatchSampler({ numSamples: split.train.length, batchSize: b, seed })
    // Steady state: the clock starts after the first step, on both sides (first-step warm-up
    // — allocations, thread pools — is not what the stage adds).
    let t0 = 0
    for (let s = 0; s < steps; s++) {
      if (s === 1) t0 = performance.now()
      const batch = shards.getBatch(Array.from(sampler.next().indices, (i) => split.train[i]!), t)
      trainer.step([batch], b, 1e-3)
    }
    const dt = (performance.now() - t0) / 1000
    trainer.free()
    model.free()
    return (steps - 1) / dt
  }

  let run = 0
  const pipeline = async (): Promise<number> => {
    const runDir = join(dir, `run-${run++}`)
    const o: StageOptions = {
      stage: "pretrain",
      runDir,
      data: [shardDir],
      tokenizer: tokDir,
      init: { preset: "tiny", overrides: { ...MODEL, vocab_size: vocab } },
      seqLen: t,
      batchSize: b,
      accum: 1,
      epochs: 1,
      maxSteps: steps,
      lr: 1e-3,
      minLrRatio: 0.1,
      warmupSteps: 0,
      weightDecay: 0.01,
      gradClip: 1,
      seed,
      evalEvery: 0,
      evalBatches: 0,
      evalFraction: 0,
      saveEvery: 0,
      resume: false,
      onBadRecord: "skip",
      objective: { kind: "lm" },
      device: "cpu",
      quiet: true,
    }
    // The stage's own clock covers its step loop (setup and the final save are excluded, as
    // they are in the bare loop).
    await Effect.runPromise(runStage(o))
    const lines = readFileSync(join(runDir, "pretrain", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l))
    const elapsed = (lines[lines.length - 1].elapsed_s as number) - (lines[0].elapsed_s as number)
    rmSync(runDir, { recursive: true, force: true })
    return (steps - 1) / elapsed
  }

  const samples = quick ? 2 : 6
  const bareS: number[] = []
  const pipeS: number[] = []
  bare() // warm-up
  for (let i = 0; i < samples; i++) {
    if (i % 2 === 0) {
      bareS.push(bare())
      pipeS.push(await pipeline())
    } else {
      pipeS.push(await pipeline())
      bareS.push(bare())
    }
  }
  const sb = stats(bareS)
  const sp = stats(pipeS)

  // Shard reading: random batches of 32 × 256.
  const rb = 32
  const rt = 256
  const reads = quick ? 200 : 1000
  const readS: number[] = []
  for (let r = 0; r < 3; r++) {
    const sampler = new BatchSampler({ numSamples: shards.numSamples, batchSize: Math.min(rb, shards.numSamples), seed: r })
    const t0 = performance.now()
    for (let i = 0; i < reads; i++) shards.getBatch(sampler.next().indices, rt)
    readS.push((reads * rb * rt) / ((performance.now() - t0) / 1000))
  }
  const sr = stats(readS)

  return [
    { suite: "pipeline", name: `pretrain steps (${b}×${t}, demo-sized model)`, backend: "bare loop (sampler → getBatch → trainer.step)", unit: "steps/s", value: sb.median, spread: sb.spread },
    {
      suite: "pipeline",
      name: `pretrain steps (${b}×${t}, demo-sized model)`,
      backend: "Effect stage (runStage)",
      unit: "steps/s",
      value: sp.median,
      spread: sp.spread,
      baseline: "bare loop",
      ratio: sp.median / sb.median,
      note: `overhead ${((sb.median / sp.median - 1) * 100).toFixed(1)}% (target ≤ 3%), ${((1 / sp.median - 1 / sb.median) * 1000).toFixed(2)} ms per step`,
    },
    { suite: "pipeline", name: `shard getBatch (${rb}×${rt}, random)`, backend: "mmap shards", unit: "Mtokens/s", value: sr.median / 1e6, spread: sr.spread, note: `${((sr.median * 2) / 2 ** 20).toFixed(0)} MB/s of uint16 ids` },
  ]
}

if (import.meta.main) {
  const rows = await pipelineSuite(process.argv.includes("--quick"))
  const { md } = writeReport("pipeline", rows)
  console.log(readFileSync(md, "utf8"))
}
