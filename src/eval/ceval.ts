/**
 * Multiple-choice evaluation (C-Eval, and CMMLU-style directories) with the seed's zero-shot protocol
 * (MiniMind's C-Eval script): the user turn `{question}。选择 A: {A}, B: {B}, C: {C}, D: {D}` after the
 * system turn "开始回答问题", rendered with the tokenizer's chat template and a generation prompt; the
 * prediction is the argmax of the next-token logits of the tokens "A", "B", "C", "D" (ties → the first).
 * The reported probabilities are the softmax over those four logits.
 *
 * Few-shot (`shots` = k): the first k dev examples of the same subject come before the question as
 * user/assistant turns, the assistant answering with the bare letter.
 *
 * Batching: the native forward takes `[b, t]` rows with no attention mask, so only prompts of equal
 * token length share a batch (grouped by length, at most `batchSize` rows, input order within a
 * length); nothing is padded. (Right padding with whole-sequence logits was tried: exact under causal
 * attention, but the all-position LM head made it 3-4x slower on a tiny model.) Results equal
 * unbatched scoring up to float rounding of batched matrix products (~1e-7 in the logits). The batch
 * plan depends only on the data and `batchSize`, so runs are repeatable bit for bit.
 *
 * Inputs: a directory with `<split>/` holding one CSV per subject (`<subject>_<split>.csv` or
 * `<subject>.csv`), or a directory of CSVs itself. C-Eval headers `id,question,A,B,C,D,answer` and
 * CMMLU headers `,Question,A,B,C,D,Answer` are both read (column names are case-insensitive).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs"
import { basename, join } from "node:path"
import { writeFileAtomic } from "../util/fs.ts"
import { Data, Effect } from "effect"
import type { Model } from "../model/model.ts"
import { applyChatTemplate, type ChatMessage, type TokenizerConfig } from "../tokenizer/chat-template.ts"
import type { Tokenizer } from "../tokenizer/tokenizer.ts"
import { CsvParser, type CsvRow } from "../data/csv.ts"
import { CATEGORIES, categoryOf, UNCATEGORIZED, type Benchmark } from "./categories.ts"

/** A problem with the evaluation's inputs (missing directory, bad CSV, tokenizer mismatch). */
export class EvalError extends Data.TaggedError("EvalError")<{ readonly message: string }> {}

export const LETTERS = ["A", "B", "C", "D"] as const
export type Letter = (typeof LETTERS)[number]
export const SYSTEM_PROMPT = "开始回答问题"

export interface McQuestion {
  readonly id: string
  readonly question: string
  readonly choices: readonly [string, string, string, string]
  readonly answer: Letter
  /** 1-based line in the CSV where the row starts. */
  readonly line: number
}

export interface McSubject {
  readonly name: string
  readonly file: string
  readonly style: Benchmark
  readonly questions: readonly McQuestion[]
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

const SPLIT_SUFFIX = /_(val|dev|test)$/

/** `accountant_val.csv` → `accountant`; `agronomy.csv` → `agronomy`. */
export const subjectOfFile = (file: string): string => basename(file).replace(/\.csv$/i, "").replace(SPLIT_SUFFIX, "")

/** Parses one subject's CSV (C-Eval or CMMLU header). Throws `EvalError` naming the file. */
export function parseMcCsv(file: string, text: string): McSubject {
  const parser = new CsvParser()
  const rows: CsvRow[] = []
  parser.push(text.replace(/^\uFEFF/, ""), rows)
  const open = parser.end(rows)
  if (open !== undefined) throw new EvalError({ message: `${file}:${open}: quoted field never closed before the end of the file` })
  const header = rows.shift()
  if (!header) throw new EvalError({ message: `${file}: empty CSV (no header row)` })
  const names = header.fields.map((h) => h.trim())
  const lower = names.map((h) => h.toLowerCase())
  const col = (name: string) => lower.indexOf(name)
  const need = ["question", "a", "b", "c", "d", "answer"]
  const missing = need.filter((n) => col(n) < 0)
  if (missing.length > 0) {
    throw new EvalError({
      message:
        `${file}: missing column(s) ${missing.map((m) => (m.length === 1 ? m.toUpperCase() : m)).join(", ")} ` +
        `(header: ${names.map((n) => JSON.stringify(n)).join(",")}); expected C-Eval (id,question,A,B,C,D,answer) ` +
        `or CMMLU (,Question,A,B,C,D,Answer) columns`,
    })
  }
  // CMMLU: an unnamed index column first and capitalised names; C-Eval: an `id` column.
  const style: Benchmark = names[0] === "" || names.includes("Question") ? "cmmlu" : "ceval"
  const idCol = col("id") >= 0 ? col("id") : names[0] === "" ? 0 : -1
  const [qc, ac, bc, cc, dc, ansc] = need.map(col) as [number, number, number, number, number, number]
  const questions = rows.map((row, i): McQuestion => {
    if (row.fields.length !== names.length) {
      throw new EvalError({
        message: `${file}:${row.line}: expected ${names.length} fields, got ${row.fields.length}; quote fields that contain commas or newlines`,
      })
    }
    const f = row.fields
    const answer = f[ansc]!.trim().toUpperCase()
    if (!(LETTERS as readonly string[]).includes(answer)) {
      throw new EvalError({
        message: `${file}:${row.line}: answer ${JSON.stringify(f[ansc])} is not one of A, B, C, D${answer === "" ? " (a test split without answers cannot be scored)" : ""}`,
      })
    }
    return {
      id: idCol >= 0 ? f[idCol]!.trim() : String(i),
      question: f[qc]!,
      choices: [f[ac]!, f[bc]!, f[cc]!, f[dc]!],
      answer: answer as Letter,
      line: row.line,
    }
  })
  return { name: subjectOfFile(file), file, style, questions }
}

/** The directory holding a split's CSVs: `<data>/<split>/`, or `<data>` itself when it holds CSVs. */
export function splitDir(data: string, split: string): string {
  if (!existsSync(data)) throw new EvalError({ message: `${data}: no such directory (expected a C-Eval/CMMLU directory with ${split}/*.csv)` })
  if (!statSync(data).isDirectory()) throw new EvalError({ message: `${data}: not a directory (expected a C-Eval/CMMLU directory with ${split}/*.csv)` })
  const sub = join(data, split)
  if (existsSync(sub) && statSync(sub).isDirectory()) return sub
  if (readdirSync(data).some((f) => f.toLowerCase().endsWith(".csv"))) return data
  throw new EvalError({ message: `${data}: has no ${split}/ directory and no CSV files` })
}

/** Every subject of a split directory, sorted by subject name; `only` keeps the named subjects. */
export function readMcDir(dir: string, only?: readonly string[]): McSubject[] {
  const files = readdirSync(dir).filter((f) => f.toLowerCase().endsWith(".csv")).sort()
  if (files.length === 0) throw new EvalError({ message: `${dir}: no CSV files` })
  const bySubject = new Map<string, string>()
  for (const f of files) {
    const s = subjectOfFile(f)
    if (bySubject.has(s)) throw new EvalError({ message: `${dir}: two files for subject "${s}": ${bySubject.get(s)} and ${f}` })
    bySubject.set(s, f)
  }
  let names = [...bySubject.keys()].sort()
  if (only && only.length > 0) {
    const unknown = only.filter((s) => !bySubject.has(s))
    if (unknown.length > 0) {
      throw new EvalError({ message: `unknown subject(s) ${unknown.join(", ")} in ${dir} (it has: ${names.join(", ")})` })
    }
    names = names.filter((s) => only.includes(s))
  }
  return names.map((s) => {
    const file = join(dir, bySubject.get(s)!)
    let text: string
    try {
      text = readFileSync(file, "utf8")
    } catch (e) {
      throw new EvalError({ message: `${file}: cannot read: ${e instanceof Error ? e.message : String(e)}` })
    }
    return parseMcCsv(file, text)
  })
}

// ---------------------------------------------------------------------------------------------------------------
// Prompts

/** The seed's user turn: `{question}。选择 A: {A}, B: {B}, C: {C}, D: {D}`. */
export const questionPrompt = (q: Pick<McQuestion, "question" | "choices">): string =>
  `${q.question}。选择 A: ${q.choices[0]}, B: ${q.choices[1]}, C: ${q.choices[2]}, D: ${q.choices[3]}`

/** System turn, then each shot as a user/assistant pair (answer letter), then the question. */
export const questionMessages = (q: McQuestion, shots: readonly McQuestion[] = []): ChatMessage[] => [
  { role: "system", content: SYSTEM_PROMPT },
  ...shots.flatMap((s): ChatMessage[] => [
    { role: "user", content: questionPrompt(s) },
    { role: "assistant", content: s.answer },
  ]),
  { role: "user", content: questionPrompt(q) },
]

export const renderQuestion = (chat: TokenizerConfig, q: McQuestion, shots: readonly McQuestion[] = []): string =>
  applyChatTemplate(chat, questionMessages(q, shots), { addGenerationPrompt: true })

/** The ids of "A".."D"; each must be a single token. */
export function letterIds(tok: Pick<Tokenizer, "encode">): [number, number, number, number] {
  return LETTERS.map((l) => {
    const ids = tok.encode(l)
    if (ids.length !== 1) {
      throw new EvalError({
        message: `the tokenizer encodes "${l}" as ${ids.length} tokens [${Array.from(ids).join(", ")}]; answer letters must be single tokens for this protocol`,
      })
    }
    return ids[0]!
  }) as [number, number, number, number]
}

/** Shots for `q`: the first k dev examples of the subject, skipping `q` itself when scoring the dev split. */
export function pickShots(dev: McSubject, q: McQuestion, k: number, sameSplit: boolean): McQuestion[] {
  const pool = sameSplit ? dev.questions.filter((d) => d.line !== q.line) : dev.questions
  if (pool.length < k) {
    throw new EvalError({ message: `--shots ${k}: ${dev.file} has only ${pool.length} usable example(s)${sameSplit ? " (the scored question is excluded)" : ""}` })
  }
  return pool.slice(0, k)
}

// ---------------------------------------------------------------------------------------------------------------
// Scoring

export interface Scored {
  /** Softmax over the four letter logits. */
  readonly probs: [number, number, number, number]
  readonly logits: [number, number, number, number]
  readonly predicted: Letter
}

/** Argmax over the four letter logits (ties → first), with their softmax. */
export function scoreLogits(row: ArrayLike<number>, offset: number, ids: readonly number[]): Scored {
  const logits = ids.map((id) => row[offset + id]!) as [number, number, number, number]
  let best = 0
  for (let k = 1; k < 4; k++) if (logits[k]! > logits[best]!) best = k
  const m = logits[best]!
  const e = logits.map((x) => Math.exp(x - m))
  const z = e.reduce((a, b) => a + b, 0)
  return { logits, probs: e.map((x) => x / z) as [number, number, number, number], predicted: LETTERS[best]! }
}

/**
 * Batches of indices into `lengths`: rows of equal length only (the native forward has no attention
 * mask), in ascending length, at most `batchSize` rows each; ties keep input order.
 */
export function planBatches(lengths: readonly number[], batchSize: number): number[][] {
  const byLength = new Map<number, number[]>()
  lengths.forEach((t, i) => {
    const rows = byLength.get(t)
    if (rows) rows.push(i)
    else byLength.set(t, [i])
  })
  const batches: number[][] = []
  for (const t of [...byLength.keys()].sort((x, y) => x - y)) {
    const rows = byLength.get(t)!
    for (let k = 0; k < rows.length; k += batchSize) batches.push(rows.slice(k, k + batchSize))
  }
  return batches
}

/**
 * Next-token logits after each prompt, batched as `planBatches` says. `onBatch(done)` is called after
 * each batch. Returns `[n, V]` logits, row i for prompt i.
 */
export function lastLogits(
  model: Pick<Model, "forward" | "vocabSize">,
  prompts: readonly Uint32Array[],
  batchSize: number,
  onBatch?: (done: number) => void,
): Float32Array {
  const V = model.vocabSize
  const out = new Float32Array(prompts.length * V)
  let done = 0
  for (const batch of planBatches(prompts.map((p) => p.length), batchSize)) {
    const t = prompts[batch[0]!]!.length
    const ids = new Uint32Array(batch.length * t)
    batch.forEach((i, r) => ids.set(prompts[i]!, r * t))
    const logits = model.forward(ids, batch.length)
    batch.forEach((i, r) => out.set(logits.subarray(r * V, (r + 1) * V), i * V))
    done += batch.length
    onBatch?.(done)
  }
  return out
}

export interface QuestionResult {
  readonly subject: string
  readonly question: McQuestion
  readonly scored: Scored
  readonly correct: boolean
  readonly promptTokens: number
}

export interface Tally {
  readonly correct: number
  readonly total: number
  readonly accuracy: number
}

export interface McSummary {
  readonly benchmark: Benchmark
  readonly split: string
  readonly shots: number
  readonly batch_size: number
  readonly letter_ids: Record<Letter, number>
  /** Prompts longer than the model's context, cut from the left. */
  readonly truncated: number
  readonly subjects: Record<string, Tally & { readonly category: string }>
  readonly categories: Record<string, Tally & { readonly subjects: number }>
  readonly total: Tally
}

export interface McReport {
  readonly summary: McSummary
  readonly results: readonly QuestionResult[]
}

export interface McEvalOptions {
  readonly model: Model
  readonly tokenizer: Tokenizer
  readonly chat: TokenizerConfig
  readonly data: string
  readonly split: string
  readonly shots?: number
  readonly batchSize?: number
  readonly subjects?: readonly string[]
  readonly onProgress?: (done: number, total: number) => void
}

const tally = (correct: number, total: number): Tally => ({ correct, total, accuracy: total > 0 ? correct / total : 0 })

/** Scores every question of the split; see the module comment for the protocol. */
export const runMcEval = (o: McEvalOptions): Effect.Effect<McReport, EvalError | Error> =>
  Effect.gen(function* () {
    const shots = o.shots ?? 0
    const batchSize = o.batchSize ?? 16
    if (!Number.isInteger(shots) || shots < 0 || shots > 5) return yield* Effect.fail(new EvalError({ message: `--shots ${shots}: expected 0..5` }))
    if (!Number.isInteger(batchSize) || batchSize < 1) return yield* Effect.fail(new EvalError({ message: `--batch-size ${batchSize}: expected a positive integer` }))
    const tryEval = <A>(f: () => A) =>
      Effect.try({ try: f, catch: (e) => (e instanceof EvalError ? e : e instanceof Error ? e : new EvalError({ message: String(e) })) })

    const subjects = yield* tryEval(() => readMcDir(splitDir(o.data, o.split), o.subjects))
    const ids = yield* tryEval(() => letterIds(o.tokenizer))
    const devs = yield* tryEval(() => {
      const bySubject = new Map<string, McSubject>()
      if (shots === 0) return bySubject
      if (o.split === "dev") {
        for (const s of subjects) bySubject.set(s.name, s)
        return bySubject
      }
      const devDir = join(o.data, "dev")
      if (!existsSync(devDir)) throw new EvalError({ message: `--shots ${shots}: few-shot examples come from ${devDir}, which does not exist` })
      for (const s of readMcDir(devDir)) bySubject.set(s.name, s)
      const missing = subjects.filter((s) => !bySubject.has(s.name)).map((s) => s.name)
      if (missing.length > 0) throw new EvalError({ message: `--shots ${shots}: ${devDir} has no dev file for ${missing.join(", ")}` })
      return bySubject
    })
    const benchmark: Benchmark = subjects.some((s) => s.style === "cmmlu") ? "cmmlu" : "ceval"

    const items = subjects.flatMap((s) => s.questions.map((q) => ({ subject: s.name, q })))
    const texts = yield* tryEval(() =>
      items.map(({ subject, q }) => renderQuestion(o.chat, q, shots > 0 ? pickShots(devs.get(subject)!, q, shots, o.split === "dev") : [])),
    )
    const maxLen = o.model.config.max_position_embeddings
    let truncated = 0
    const prompts = yield* tryEval(() =>
      o.tokenizer.encodeBatch(texts).map((p) => {
        if (p.length <= maxLen) return p
        truncated++
        return p.slice(p.length - maxLen)
      }),
    )
    const empty = prompts.findIndex((p) => p.length === 0)
    if (empty >= 0) return yield* Effect.fail(new EvalError({ message: `${items[empty]!.subject} question ${items[empty]!.q.id}: the prompt encodes to no tokens` }))

    const V = o.model.vocabSize
    const logits = yield* tryEval(() => lastLogits(o.model, prompts, batchSize, (d) => o.onProgress?.(d, items.length)))
    const results = items.map(({ subject, q }, i): QuestionResult => {
      const scored = scoreLogits(logits, i * V, ids)
      return { subject, question: q, scored, correct: scored.predicted === q.answer, promptTokens: prompts[i]!.length }
    })

    const subjTallies: McSummary["subjects"] = {}
    const catCounts = new Map<string, { correct: number; total: number; subjects: number }>()
    for (const s of subjects) {
      const rs = results.filter((r) => r.subject === s.name)
      const c = rs.filter((r) => r.correct).length
      const category = categoryOf(benchmark, s.name)
      subjTallies[s.name] = { category, ...tally(c, rs.length) }
      const cc = catCounts.get(category) ?? { correct: 0, total: 0, subjects: 0 }
      catCounts.set(category, { correct: cc.correct + c, total: cc.total + rs.length, subjects: cc.subjects + 1 })
    }
    const categories: McSummary["categories"] = {}
    for (const name of [...CATEGORIES, UNCATEGORIZED]) {
      const cc = catCounts.get(name)
      if (cc) categories[name] = { subjects: cc.subjects, ...tally(cc.correct, cc.total) }
    }
    const summary: McSummary = {
      benchmark,
      split: o.split,
      shots,
      batch_size: batchSize,
      letter_ids: { A: ids[0], B: ids[1], C: ids[2], D: ids[3] },
      truncated,
      subjects: subjTallies,
      categories,
      total: tally(results.filter((r) => r.correct).length, results.length),
    }
    return { summary, results }
  })

// ---------------------------------------------------------------------------------------------------------------
// Reports

const csvField = (v: string | number): string => {
  const s = String(v)
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s
}

export const RESULT_COLUMNS = ["id", "question", "answer", "model_answer", "correct", "prob_A", "prob_B", "prob_C", "prob_D"] as const

/** `<out>/<subject>.csv` per subject and `<out>/summary.json` (each written atomically). */
export function writeMcReport(outDir: string, report: McReport): void {
  mkdirSync(outDir, { recursive: true })
  for (const subject of Object.keys(report.summary.subjects)) {
    const lines = [RESULT_COLUMNS.join(",")]
    for (const r of report.results) {
      if (r.subject !== subject) continue
      const q = r.question
      lines.push([q.id, q.question, q.answer, r.scored.predicted, r.correct ? 1 : 0, ...r.scored.probs].map(csvField).join(","))
    }
    writeFileAtomic(join(outDir, `${subject}.csv`), `${lines.join("\n")}\n`)
  }
  writeFileAtomic(join(outDir, "summary.json"), `${JSON.stringify(report.summary, null, 2)}\n`)
}

/** Per-subject, per-category and total accuracy as a plain-text table. */
export function formatMcTable(s: McSummary): string {
  const names = Object.keys(s.subjects)
  const w = Math.max(24, ...names.map((n) => n.length), ...Object.keys(s.categories).map((n) => n.length + 2))
  const row = (name: string, t: Tally, extra = "") =>
    `${name.padEnd(w)} ${String(t.correct).padStart(5)} / ${String(t.total).padEnd(5)} ${(t.accuracy * 100).toFixed(2).padStart(6)}%${extra}`
  const rule = "-".repeat(w + 24)
  const lines = [`${"subject".padEnd(w)} correct / total  accuracy   category`, rule]
  for (const n of names) lines.push(row(n, s.subjects[n]!, `   ${s.subjects[n]!.category}`))
  lines.push(rule)
  for (const [n, t] of Object.entries(s.categories)) lines.push(row(`[${n}]`, t, `   ${t.subjects} subject${t.subjects === 1 ? "" : "s"}`))
  lines.push(rule)
  lines.push(row(`TOTAL (${s.benchmark} ${s.split}, ${s.shots}-shot)`, s.total))
  return lines.join("\n")
}
