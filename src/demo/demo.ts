/**
 * `bunmind demo`: from nothing to a model that has visibly learned, on a laptop CPU.
 *
 *   generated world of facts (EN + ZH) → tokenizer → pretrain (biographies, plus plain-text Q&A
 *   about the train split's people) → SFT (chat Q&A about the train split's people) → DPO (right
 *   vs wrong answers) → held-out accuracy: chat questions about people whose facts appear ONLY in
 *   the pretraining biographies.
 *
 * The pretrained model has never seen a chat turn, so it rarely answers one; after SFT it answers
 * chat questions about people it only read about — knowledge extraction learned from other people.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { Effect } from "effect"
import { generateBatch } from "../model/generate.ts"
import { loadModel } from "../model/model.ts"
import { runPipeline, type PipelineConfig } from "../pipeline/pipeline.ts"
import { writeRunReport } from "../report/index.ts"
import { applyChatTemplate, loadTokenizerConfig } from "../tokenizer/chat-template.ts"
import { loadTokenizer } from "../tokenizer/tokenizer.ts"
import { generateDemoData, writeDemoData, type Question } from "./facts.ts"
import { formatScoreTable, scoreAnswers, type ScoreReport } from "./score.ts"

export interface DemoOptions {
  /** Run directory (default runs/demo). */
  run: string
  seed: number
  /** A much smaller run for tests: fewer steps, smaller world. */
  quick?: boolean
  quiet?: boolean
}

/** The demo's model: a small LLaMA (MiniMind shape) sized to learn the world in minutes on 2 cores. */
export const DEMO_MODEL = {
  hidden_size: 128,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  intermediate_size: 384,
  max_position_embeddings: 256,
  rope_theta: 10000,
}

/**
 * The data design (see facts.ts; each choice below was measured on held-out accuracy):
 * - knowledge-augmented biographies of everyone, and plain-text Q&A about the TRAIN people mixed
 *   into pretraining ("mixed training", Allen-Zhu & Li): the model learns to answer from what it
 *   read while it reads it, and SFT only has to move that skill into the chat format;
 * - every answer starts with a short lead ("Well, " / "嗯，") and then restates the name, so the
 *   name is written exactly as in the question and the biographies (same tokens: an English name
 *   at the start of a line tokenizes differently) and the answer is a continuation the model knows;
 * - no name-echo or invented-name chats in SFT: their throwaway names taught the model to invent
 *   names instead of copying the one asked about.
 */
export const DEMO_DATA = { qaInPretrain: 2, echoChats: 0, contextChats: 0, answerLead: { en: "Well, ", zh: "嗯，" } } as const

/**
 * Vocabulary size of the demo's tokenizer: large enough that every name is one token in both
 * languages (at 1536 a quarter of the English first names split into a lone capital and a rest,
 * which the model fails to copy), small enough that the values are not yet fused with the words
 * before them (at 2048 "养了一只鹦鹉" is one token, and the Chinese answers pick the wrong attribute).
 */
export const DEMO_VOCAB = 1664

export function demoPipeline(o: DemoOptions, dataDir: string): PipelineConfig {
  const q = o.quick
  return {
    run: resolve(o.run),
    seed: o.seed,
    tokenizer: { data: [join(dataDir, "pretrain.jsonl"), join(dataDir, "sft.jsonl")], vocab_size: q ? 600 : DEMO_VOCAB, min_frequency: 2 },
    stages: [
      {
        // Biographies packed into full rows: no compute spent on padding.
        stage: "pretrain",
        data: [join(dataDir, "pretrain.jsonl")],
        preset: "tiny",
        overrides: q ? { ...DEMO_MODEL, hidden_size: 64, num_hidden_layers: 2, intermediate_size: 192 } : DEMO_MODEL,
        pack: true,
        epochs: q ? 1 : 8,
        ...(q ? { steps: 30 } : {}),
        batchSize: 16,
        accum: 1,
        seqLen: 128,
        lr: 3e-3,
        warmup: q ? 3 : 10,
        evalEvery: q ? 15 : 50,
        evalFraction: 0.02,
        saveEvery: 100,
      },
      {
        // Short and gentle: SFT teaches the chat format; a long or fast one memorises the train
        // people's answers and starts answering held-out questions with their names.
        stage: "sft",
        data: [join(dataDir, "sft.jsonl")],
        epochs: q ? 1 : 4,
        ...(q ? { steps: 15 } : {}),
        batchSize: 16,
        seqLen: 96,
        lr: 3e-4,
        warmup: q ? 2 : 10,
        evalEvery: q ? 15 : 50,
        evalFraction: 0.02,
        saveEvery: 100,
      },
      {
        stage: "dpo",
        data: [join(dataDir, "dpo.jsonl")],
        epochs: 1,
        ...(q ? { steps: 4 } : {}),
        batchSize: 8,
        seqLen: 96,
        lr: 2e-5,
        beta: 0.1,
        evalFraction: 0,
        saveEvery: 100,
      },
    ],
  }
}

/** Greedy answers of the model in `dir` to `questions`, asked as chat turns. */
export const answer = (dir: string, tokenizerDir: string, questions: readonly Question[], maxNewTokens = 32) =>
  Effect.gen(function* () {
    const model = yield* loadModel(dir)
    const tok = yield* loadTokenizer(tokenizerDir)
    const cfg = loadTokenizerConfig(tokenizerDir)
    const prompts = questions.map((q) => tok.encode(applyChatTemplate(cfg, [{ role: "user", content: q.question }], { addGenerationPrompt: true })))
    const out: string[] = []
    const stops = model.stopTokenIds
    for (let i = 0; i < prompts.length; i += 32) {
      const rows = generateBatch(model, prompts.slice(i, i + 32), { temperature: 0, maxNewTokens, stopTokenIds: stops })
      for (const ids of rows) out.push(tok.decode(ids.filter((t) => !stops.includes(t)), true).trim())
    }
    return out
  }).pipe(Effect.scoped)

export interface DemoResult {
  run: string
  scores: Record<string, ScoreReport>
  report: string
}

export const runDemo = (o: DemoOptions) =>
  Effect.gen(function* () {
    const say = (s: string) => {
      if (!o.quiet) console.log(s)
    }
    const run = resolve(o.run)
    const dataDir = join(run, "data")
    const data = generateDemoData({ seed: o.seed, ...DEMO_DATA, ...(o.quick ? { entities: 24, biosPerEntity: 8 } : {}) })
    if (!existsSync(join(dataDir, "pretrain.jsonl")) || !o.quick) {
      mkdirSync(dataDir, { recursive: true })
      writeDemoData(dataDir, data)
    }
    const s = data.stats
    say(`bunmind demo: a world of ${s.entities} people (${s.trainEntities} taught in SFT, ${s.heldOutEntities} held out), ${s.facts} facts in English and Chinese`)
    say(`  pretrain ${s.pretrain.documents} docs (${(s.pretrain.bytes / 1024).toFixed(0)} KB), SFT ${s.sft.documents} chats, DPO ${s.dpo.documents} pairs, ${s.heldOutQuestions} held-out questions`)

    const cfg = demoPipeline(o, dataDir)
    yield* runPipeline(cfg, { quiet: o.quiet })

    const tokenizerDir = join(run, "tokenizer")
    const scores: Record<string, ScoreReport> = {}
    const answers: Record<string, string[]> = {}
    for (const stage of ["pretrain", "sft", "dpo"] as const) {
      answers[stage] = yield* answer(join(run, stage, "model"), tokenizerDir, data.heldOut)
      scores[stage] = scoreAnswers(data.heldOut, answers[stage]!)
    }
    const samples = data.heldOut
      .filter((_, i) => i % Math.max(1, Math.floor(data.heldOut.length / 6)) === 0)
      .slice(0, 6)
      .map((q) => {
        const i = data.heldOut.indexOf(q)
        return { question: q.question, answer: q.answer, model: { pretrain: answers.pretrain![i]!, sft: answers.sft![i]!, dpo: answers.dpo![i]! } }
      })

    say("\nSample answers to held-out questions (facts seen only in pretraining text):")
    for (const x of samples) {
      say(`  Q: ${x.question}   (expected: ${x.answer})`)
      say(`     pretrained: ${JSON.stringify(x.model.pretrain.slice(0, 80))}`)
      say(`     SFT:        ${JSON.stringify(x.model.sft.slice(0, 80))}`)
      say(`     DPO:        ${JSON.stringify(x.model.dpo.slice(0, 80))}`)
    }
    say("\nHeld-out accuracy:")
    say(formatScoreTable(Object.entries(scores).map(([label, report]) => ({ label, report }))))

    const evalDir = join(run, "eval")
    mkdirSync(evalDir, { recursive: true })
    const heldout = Object.fromEntries(Object.entries(scores).map(([k, v]) => [k, { accuracy: v.accuracy, correct: v.correct, total: v.total }]))
    writeFileSync(join(evalDir, "summary.json"), JSON.stringify({ heldout, samples, per_model: scores }, null, 2) + "\n")
    const report = yield* Effect.promise(() => writeRunReport(run))
    say(`\nreport: ${report}`)
    return { run, scores, report } satisfies DemoResult
  })
