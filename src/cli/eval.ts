/** `bunmind eval ...`: C-Eval / CMMLU multiple choice (`ceval`) and perplexity (`ppl`). */
import { existsSync, statSync } from "node:fs"
import { dirname, join } from "node:path"
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { loadModel } from "../model/model.ts"
import { loadTokenizer } from "../tokenizer/tokenizer.ts"
import { loadTokenizerConfig } from "../tokenizer/chat-template.ts"
import { EvalError, formatMcTable, runMcEval, writeMcReport } from "../eval/ceval.ts"
import { runPpl } from "../eval/ppl.ts"
import { deviceFlag, parseDevice, resolveTokenizer } from "./model.ts"
import { fmtTime, ProgressBar } from "../util/progress.ts"
import { UsageError } from "./errors.ts"

const modelFlag = Flag.String("model").pipe(Flag.withDescription("model directory (config.json + model.safetensors)"))
const tokenizerFlag = Flag.String("tokenizer").pipe(Flag.optional, Flag.withDescription("tokenizer.json or its directory (default: next to the model)"))
const batchFlag = Flag.Int("batch-size").pipe(Flag.withDefault(16), Flag.withDescription("rows per forward pass"))

/** The directory of tokenizer_config.json for a `--tokenizer` that names a directory or a tokenizer.json. */
const configDir = (tok: string): string => (existsSync(tok) && statSync(tok).isDirectory() ? tok : dirname(tok))

/** Input problems are usage errors: printed as one line, no stack. */
const asUsage = <A, R>(e: Effect.Effect<A, unknown, R>) =>
  e.pipe(Effect.mapError((err) => (err instanceof EvalError ? new UsageError({ message: err.message }) : err)))

const ceval = Command.make(
  "ceval",
  {
    model: modelFlag,
    tokenizer: tokenizerFlag,
    data: Flag.String("data").pipe(Flag.withDescription("C-Eval / CMMLU directory holding <split>/*.csv (or a directory of CSVs)")),
    split: Flag.Literals("split", ["val", "dev", "test"] as const).pipe(Flag.withDefault("val" as const), Flag.withDescription("which split to score (needs answers)")),
    shots: Flag.Int("shots").pipe(Flag.withDefault(0), Flag.withDescription("0..5 dev examples of the same subject before each question")),
    out: Flag.String("out").pipe(Flag.withDescription("output directory: <subject>.csv per subject + summary.json")),
    batchSize: batchFlag,
    limitSubjects: Flag.String("limit-subjects").pipe(Flag.optional, Flag.withDescription("comma-separated subject names to score (default: all)")),
    device: deviceFlag,
  },
  (a) =>
    asUsage(
      Effect.gen(function* () {
        if (a.shots < 0 || a.shots > 5) return yield* Effect.fail(new UsageError({ message: `--shots ${a.shots}: expected 0..5` }))
        if (a.batchSize < 1) return yield* Effect.fail(new UsageError({ message: `--batch-size ${a.batchSize}: expected a positive integer` }))
        if (!existsSync(a.data)) return yield* Effect.fail(new UsageError({ message: `--data ${a.data}: no such directory` }))
        const device = yield* parseDevice(a.device)
        const tokDir = yield* resolveTokenizer(a.model, a.tokenizer)
        const chat = yield* Effect.try({ try: () => loadTokenizerConfig(configDir(tokDir)), catch: (e) => new UsageError({ message: (e as Error).message }) })
        const model = yield* loadModel(a.model, device)
        const tokenizer = yield* loadTokenizer(tokDir)
        const subjects = Option.match(a.limitSubjects, {
          onNone: () => undefined,
          onSome: (s) => s.split(",").map((x) => x.trim()).filter((x) => x !== ""),
        })
        const bar = new ProgressBar({ label: "ceval", logEvery: 5 })
        const report = yield* runMcEval({
          model,
          tokenizer,
          chat,
          data: a.data,
          split: a.split,
          shots: a.shots,
          batchSize: a.batchSize,
          subjects,
          onProgress: (done, total) => bar.update(done, {}, total),
        })
        const elapsed = bar.elapsed
        writeMcReport(a.out, report)
        const s = report.summary
        bar.finish(`${s.total.total} questions, ${s.total.correct} correct (${(s.total.accuracy * 100).toFixed(2)}%)`)
        console.log(formatMcTable(s))
        if (s.truncated > 0) console.error(`warning: ${s.truncated} prompt(s) longer than the model's context were cut from the left`)
        console.log(`${Object.keys(s.subjects).length} subject files + summary.json in ${a.out} (${fmtTime(elapsed)}, batch size ${a.batchSize})`)
      }).pipe(Effect.scoped),
    ),
).pipe(Command.withDescription("C-Eval / CMMLU multiple choice: next-token probabilities of A/B/C/D after the chat prompt"))

const ppl = Command.make(
  "ppl",
  {
    model: modelFlag,
    tokenizer: tokenizerFlag,
    data: Flag.String("data").pipe(Flag.withDescription("a .jsonl file with a `text` field per line, or a .txt file")),
    maxLen: Flag.Int("max-len").pipe(Flag.withDefault(512), Flag.withDescription("longest input row; longer documents are split into windows")),
    batchSize: batchFlag,
    device: deviceFlag,
  },
  (a) =>
    asUsage(
      Effect.gen(function* () {
        const device = yield* parseDevice(a.device)
        const tokDir = yield* resolveTokenizer(a.model, a.tokenizer)
        const model = yield* loadModel(a.model, device)
        const tokenizer = yield* loadTokenizer(tokDir)
        const cfgDir = configDir(tokDir)
        const chat = existsSync(join(cfgDir, "tokenizer_config.json")) ? loadTokenizerConfig(cfgDir) : undefined
        const bar = new ProgressBar({ label: "ppl", logEvery: 5 })
        const r = yield* runPpl({ model, tokenizer, chat, path: a.data, maxLen: a.maxLen, batchSize: a.batchSize, onProgress: (d, t) => bar.update(d, {}, t) })
        bar.finish(`${r.tokens} tokens`)
        console.log(`file:      ${r.file}`)
        console.log(`documents: ${r.documents} (${r.windows} windows of ≤ ${a.maxLen} tokens)`)
        console.log(`tokens:    ${r.tokens}`)
        console.log(`mean NLL:  ${r.meanNll.toFixed(6)}`)
        console.log(`ppl:       ${r.ppl.toFixed(4)}`)
      }).pipe(Effect.scoped),
    ),
).pipe(Command.withDescription("perplexity (exp of the token-mean cross-entropy) on a JSONL or text file"))

export const evalCommand = Command.make("eval").pipe(
  Command.withDescription("evaluate models: C-Eval / CMMLU accuracy, perplexity"),
  Command.withSubcommands([ceval, ppl]),
)
