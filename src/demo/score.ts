/**
 * Scoring free-text answers to fact questions. An answer is correct when the first value of the
 * asked attribute that it mentions is the expected one, and no other value of that attribute
 * shares its sentence. So "Lina Vex lives in Qorath." is correct, a rambling list
 * "Qorath, Velmora, Tarsin..." is not (even when it starts with the right city), and neither is
 * "Lina Vex lives in Velmora. ... Qorath" (the first value named is wrong). A model that goes on
 * to talk about someone else after a right answer keeps its point.
 * Latin forms match case-insensitively on word boundaries ("cat" is not in "category"); Chinese
 * forms match as substrings. Questions carry their own accept/reject forms (see facts.ts).
 */
import type { Attribute, Lang, Question } from "./facts.ts"

export type Outcome = "correct" | "wrong" | "hedged" | "none"

export interface Verdict {
  readonly question: string
  readonly lang: Lang
  readonly attribute: Attribute
  readonly expected: string
  readonly answer: string
  readonly correct: boolean
  readonly outcome: Outcome
  /** The first value form the answer mentions, if any. */
  readonly mentioned?: string
}

export interface Tally {
  readonly correct: number
  readonly total: number
  readonly accuracy: number
}

export interface ScoreReport extends Tally {
  /** Expected accuracy of a uniform guess among the attribute's values. */
  readonly chance: number
  readonly perLang: Readonly<Record<string, Tally>>
  readonly perAttribute: Readonly<Record<string, Tally>>
  readonly outcomes: Readonly<Record<Outcome, number>>
  /** A few verdicts for display: the first correct and wrong ones, per language. */
  readonly samples: readonly Verdict[]
  readonly verdicts: readonly Verdict[]
}

interface Mention {
  readonly start: number
  readonly end: number
  readonly form: string
  readonly expected: boolean
}

const LATIN = /[A-Za-z0-9]/
const SENTENCE_END = /[.!?;。！？；\n]/

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/** Every occurrence of every form, longest first at equal starts, overlaps removed. */
export const findMentions = (text: string, accept: readonly string[], reject: readonly string[]): Mention[] => {
  const found: Mention[] = []
  const scan = (form: string, expected: boolean) => {
    if (form === "") return
    if (LATIN.test(form)) {
      const re = new RegExp(`(?<![A-Za-z0-9])${escape(form)}(?![A-Za-z0-9])`, "gi")
      for (const m of text.matchAll(re)) found.push({ start: m.index!, end: m.index! + m[0].length, form, expected })
    } else {
      for (let i = text.indexOf(form); i >= 0; i = text.indexOf(form, i + 1)) found.push({ start: i, end: i + form.length, form, expected })
    }
  }
  for (const f of accept) scan(f, true)
  for (const f of reject) scan(f, false)
  found.sort((a, b) => a.start - b.start || b.end - b.start - (a.end - a.start))
  const out: Mention[] = []
  for (const m of found) if (!out.length || m.start >= out[out.length - 1]!.end) out.push(m)
  return out
}

/** Judges one answer to one question. */
export const judge = (q: Pick<Question, "accept" | "reject">, answer: string): { outcome: Outcome; mentioned?: string } => {
  const mentions = findMentions(answer, q.accept, q.reject)
  const first = mentions[0]
  if (!first) return { outcome: "none" }
  if (!first.expected) return { outcome: "wrong", mentioned: first.form }
  const rest = answer.slice(first.end)
  const stop = rest.search(SENTENCE_END)
  const sentenceEnd = first.end + (stop < 0 ? rest.length : stop)
  const hedged = mentions.some((m) => !m.expected && m.start < sentenceEnd)
  return { outcome: hedged ? "hedged" : "correct", mentioned: first.form }
}

const tally = (correct: number, total: number): Tally => ({ correct, total, accuracy: total ? correct / total : 0 })

const groupBy = (verdicts: readonly Verdict[], key: (v: Verdict) => string): Record<string, Tally> => {
  const acc = new Map<string, [number, number]>()
  for (const v of verdicts) {
    const k = key(v)
    const [c, t] = acc.get(k) ?? [0, 0]
    acc.set(k, [c + (v.correct ? 1 : 0), t + 1])
  }
  return Object.fromEntries([...acc].map(([k, [c, t]]) => [k, tally(c, t)]))
}

/** Scores `answers[i]` against `questions[i]`. */
export const scoreAnswers = (questions: readonly Question[], answers: readonly string[], options: { samples?: number } = {}): ScoreReport => {
  if (questions.length !== answers.length) {
    throw new RangeError(`scoreAnswers: ${questions.length} questions but ${answers.length} answers; pass one answer per question, in order`)
  }
  const verdicts: Verdict[] = questions.map((q, i) => {
    const { outcome, mentioned } = judge(q, answers[i]!)
    return {
      question: q.question,
      lang: q.lang,
      attribute: q.attribute,
      expected: q.answer,
      answer: answers[i]!,
      correct: outcome === "correct",
      outcome,
      ...(mentioned === undefined ? {} : { mentioned }),
    }
  })
  const correct = verdicts.filter((v) => v.correct).length
  const chance = questions.length ? questions.reduce((s, q) => s + 1 / (1 + distinctValues(q)), 0) / questions.length : 0
  const outcomes: Record<Outcome, number> = { correct: 0, wrong: 0, hedged: 0, none: 0 }
  for (const v of verdicts) outcomes[v.outcome]++
  return {
    ...tally(correct, verdicts.length),
    chance,
    perLang: groupBy(verdicts, (v) => v.lang),
    perAttribute: groupBy(verdicts, (v) => v.attribute),
    outcomes,
    samples: pickSamples(verdicts, options.samples ?? 6),
    verdicts,
  }
}

/** How many other values a question's reject list holds (forms of one value share a language pair). */
const distinctValues = (q: Question): number => {
  const perValue = q.accept.length
  return perValue ? Math.round(q.reject.length / perValue) : q.reject.length
}

/** Alternates languages and correct/incorrect so a short list shows both. */
const pickSamples = (verdicts: readonly Verdict[], n: number): Verdict[] => {
  const buckets = new Map<string, Verdict[]>()
  for (const v of verdicts) {
    const k = `${v.lang}:${v.correct}`
    const b = buckets.get(k) ?? []
    b.push(v)
    buckets.set(k, b)
  }
  const order = ["en:true", "zh:true", "en:false", "zh:false"].map((k) => buckets.get(k) ?? [])
  const out: Verdict[] = []
  for (let i = 0; out.length < n && order.some((b) => i < b.length); i++) {
    for (const b of order) if (i < b.length && out.length < n) out.push(b[i]!)
  }
  return out
}

const pct = (t: Tally | undefined): string => (t && t.total ? `${(100 * t.accuracy).toFixed(1)}%` : "-")

/** One-line rendering of an answer for the terminal. */
const clip = (s: string, n: number): string => {
  const flat = s.replace(/\s+/g, " ").trim()
  return [...flat].length > n ? `${[...flat].slice(0, n - 1).join("")}…` : flat
}

/** Display width: CJK and fullwidth characters take two columns. */
const width = (s: string): number => {
  let w = 0
  for (const ch of s) w += /[\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6]/.test(ch) ? 2 : 1
  return w
}
const pad = (s: string, n: number, right = false): string => (right ? " ".repeat(Math.max(0, n - width(s))) + s : s + " ".repeat(Math.max(0, n - width(s))))

/**
 * A table of held-out accuracy, one row per model, plus the chance row; with `samples`, the
 * sample answers of each model below it.
 */
export const formatScoreTable = (
  rows: readonly { readonly label: string; readonly report: ScoreReport }[],
  options: { samples?: boolean; answerWidth?: number } = {},
): string => {
  const attributes = [...new Set(rows.flatMap((r) => Object.keys(r.report.perAttribute)))]
  const langs = [...new Set(rows.flatMap((r) => Object.keys(r.report.perLang)))]
  const header = ["model", "accuracy", "correct", ...langs, ...attributes]
  const body = rows.map((r) => [
    r.label,
    pct(r.report),
    `${r.report.correct}/${r.report.total}`,
    ...langs.map((l) => pct(r.report.perLang[l])),
    ...attributes.map((a) => pct(r.report.perAttribute[a])),
  ])
  if (rows.length) body.push(["(chance)", pct(tally(rows[0]!.report.chance, 1)), "", ...langs.map(() => ""), ...attributes.map(() => "")])
  const widths = header.map((h, i) => Math.max(width(h), ...body.map((b) => width(b[i]!))))
  const line = (cells: string[]) => cells.map((c, i) => pad(c, widths[i]!, i > 0)).join("  ")
  const out = [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)]
  if (options.samples) {
    for (const r of rows) {
      out.push("", `${r.label}: sample answers`)
      for (const v of r.report.samples) {
        out.push(`  ${v.correct ? "✓" : "✗"} ${v.question}  →  ${clip(v.answer, options.answerWidth ?? 60)}  (expected ${v.expected}${v.correct ? "" : `, ${v.outcome}`})`)
      }
    }
  }
  return out.join("\n")
}
