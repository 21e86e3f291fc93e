/**
 * Looking at data before and after preparation: plain functions returning data, plus formatters
 * for the CLI (`bunmind data inspect`). Masked rendering shows the tokens a trainer learns from
 * (mask = 1) between ⟦ and ⟧.
 */
import { Effect, Result, Stream } from "effect"
import { BadRecordLog } from "./bad-records.ts"
import type { DataError, ShardError } from "./errors.ts"
import { readRecords } from "./read.ts"
import { detectKind, validateRecord, type DataKind } from "./records.ts"
import { openShards, type ShardIndex } from "./shards.ts"

export interface LengthStats {
  readonly count: number
  readonly mean: number
  readonly median: number
  readonly min: number
  readonly max: number
}

export const lengthStats = (lengths: ArrayLike<number>): LengthStats => {
  const n = lengths.length
  if (n === 0) return { count: 0, mean: 0, median: 0, min: 0, max: 0 }
  const sorted = Float64Array.from(lengths).sort()
  let sum = 0
  for (let i = 0; i < n; i++) sum += sorted[i]!
  const median = n % 2 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2
  return { count: n, mean: sum / n, median, min: sorted[0]!, max: sorted[n - 1]! }
}

/** Groups consecutive tokens by mask and decodes each run; mask-1 runs go between ⟦ ⟧. */
export const renderMasked = (
  ids: ArrayLike<number>,
  mask: ArrayLike<number>,
  decode: (ids: number[]) => string,
  marks: { readonly open: string; readonly close: string } = { open: "⟦", close: "⟧" },
): string => {
  let out = ""
  let run: number[] = []
  let cur = mask[0] ?? 0
  const flush = () => {
    if (run.length === 0) return
    const text = decode(run)
    out += cur ? `${marks.open}${text}${marks.close}` : text
    run = []
  }
  for (let t = 0; t < ids.length; t++) {
    if (mask[t] !== cur) {
      flush()
      cur = mask[t]!
    }
    run.push(ids[t]!)
  }
  flush()
  return out
}

export interface ShardInspection {
  readonly dir: string
  readonly index: ShardIndex
  readonly sequences: number
  readonly tokens: number
  readonly lengths: LengthStats
  /** Share of positions (t ≥ 1) whose target counts in the loss. */
  readonly targetShare: number
  readonly sample?: { readonly index: number; readonly ids: number[]; readonly mask: number[]; readonly rendered?: string }
}

/**
 * Statistics over every stored sequence, and sequence `sampleIndex` (default 0), rendered when a
 * `decode` function (e.g. `(ids) => tokenizer.decode(ids, false)`) is given.
 */
export const inspectShards = (
  dir: string,
  options: { readonly sampleIndex?: number; readonly decode?: (ids: number[]) => string } = {},
): Effect.Effect<ShardInspection, ShardError> =>
  Effect.map(openShards(dir), (set) => {
    const lengths = new Uint32Array(set.numSequences)
    let positions = 0
    let targets = 0
    let tokens = 0
    for (let i = 0; i < set.numSequences; i++) {
      const s = set.sequence(i)
      lengths[i] = s.ids.length
      tokens += s.ids.length
      positions += Math.max(0, s.ids.length - 1)
      for (let t = 1; t < s.mask.length; t++) targets += s.mask[t]!
    }
    const k = options.sampleIndex ?? 0
    let sample: ShardInspection["sample"]
    if (k >= 0 && k < set.numSequences) {
      const s = set.sequence(k)
      const ids = Array.from(s.ids)
      const mask = Array.from(s.mask)
      sample = { index: k, ids, mask, ...(options.decode ? { rendered: renderMasked(ids, mask, options.decode) } : {}) }
    }
    return {
      dir,
      index: set.index,
      sequences: set.numSequences,
      tokens,
      lengths: lengthStats(lengths),
      targetShare: positions ? targets / positions : 0,
      ...(sample ? { sample } : {}),
    }
  })

const fmt = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(1))

export const formatShardInspection = (r: ShardInspection): string => {
  const i = r.index
  const lines = [
    `${r.dir}`,
    `  kind ${i.kind}, layout ${i.layout}${i.rowLength ? ` (rows of ${i.rowLength})` : ""}, max_len ${i.maxLen}, ${i.shards.length} shard(s)`,
    `  source ${i.source.map((s) => s.path).join(", ")}`,
    `  tokenizer ${i.tokenizer.path} (vocab ${i.tokenizer.vocabSize}, sha256 ${i.tokenizer.sha256.slice(0, 12)}…)`,
    `  ${i.records} records → ${r.sequences} sequences, ${r.tokens} tokens; ${i.skipped} skipped, ${i.truncated} truncated${
      i.unlabeled ? `, ${i.unlabeled} without a loss token (${i.options.unlabeled === "skip" ? "skipped" : "kept"})` : ""
    }`,
    `  length mean ${fmt(r.lengths.mean)}, median ${fmt(r.lengths.median)}, min ${r.lengths.min}, max ${r.lengths.max}`,
    `  loss on ${(100 * r.targetShare).toFixed(1)}% of target positions`,
  ]
  if (r.sample) {
    lines.push(`  sequence ${r.sample.index} (${r.sample.ids.length} tokens; ⟦trained⟧):`)
    lines.push(r.sample.rendered !== undefined ? indent(r.sample.rendered) : `    ids  ${r.sample.ids.join(" ")}\n    mask ${r.sample.mask.join("")}`)
  }
  return lines.join("\n")
}

const indent = (s: string) =>
  s
    .split("\n")
    .map((l) => `    ${l}`)
    .join("\n")

export interface DatasetInspection {
  readonly path: string
  readonly records: number
  /** Records by detected shape. */
  readonly shapes: Readonly<Record<DataKind | "unknown", number>>
  /** The kind validated against (given, or the most common shape). */
  readonly kind: DataKind | undefined
  readonly valid: number
  readonly invalid: number
  /** Unparseable lines/rows (bad JSON, broken CSV rows). */
  readonly unreadable: number
  /** Characters per record (pretrain: text; chat: all contents). */
  readonly chars: LengthStats
  readonly turns?: LengthStats
  readonly problems: ReadonlyArray<string>
  readonly first?: unknown
}

const charsOf = (v: unknown): number => {
  if (typeof v === "string") return v.length
  if (Array.isArray(v)) return v.reduce((n: number, x) => n + charsOf(x), 0)
  if (v !== null && typeof v === "object") return Object.values(v).reduce((n: number, x) => n + charsOf(x), 0)
  return 0
}

/** Reads a whole input file (streamed) and reports its shape, validity and sizes. */
export const inspectDataset = (
  path: string,
  options: { readonly kind?: DataKind; readonly maxProblems?: number } = {},
): Effect.Effect<DatasetInspection, DataError> =>
  Effect.gen(function* () {
    const maxProblems = options.maxProblems ?? 10
    const read = new BadRecordLog({ mode: "skip", maxWarnings: maxProblems, log: false })
    const shapes = { pretrain: 0, sft: 0, dpo: 0, unknown: 0 }
    const chars: number[] = []
    const turns: number[] = []
    const problems: string[] = []
    let kind = options.kind
    let records = 0
    let valid = 0
    let first: unknown
    yield* readRecords(path, { bad: read }).pipe(
      Stream.runForEach((raw) =>
        Effect.sync(() => {
          records++
          const shape = detectKind(raw.value)
          shapes[shape ?? "unknown"]++
          kind ??= shape
          if (kind === undefined) return
          const r = validateRecord(kind, raw)
          if (Result.isFailure(r)) {
            if (problems.length < maxProblems) problems.push(r.failure.message)
            return
          }
          valid++
          first ??= r.success.record
          chars.push(charsOf(r.success.record))
          const rec = r.success.record as { conversations?: unknown[]; chosen?: unknown[] }
          if (rec.conversations) turns.push(rec.conversations.length)
          else if (rec.chosen) turns.push(rec.chosen.length)
        }),
      ),
    )
    return {
      path,
      records,
      shapes,
      kind,
      valid,
      invalid: records - valid,
      unreadable: read.skipped,
      chars: lengthStats(chars),
      ...(turns.length ? { turns: lengthStats(turns) } : {}),
      problems: [...read.warnings, ...problems].slice(0, maxProblems),
      ...(first !== undefined ? { first } : {}),
    }
  })

export const formatDatasetInspection = (r: DatasetInspection): string => {
  const shapes = Object.entries(r.shapes)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(", ")
  const lines = [
    `${r.path}`,
    `  ${r.records} records (${shapes || "none"}), ${r.unreadable} unreadable`,
    `  validated as ${r.kind ?? "?"}: ${r.valid} valid, ${r.invalid} invalid`,
    `  characters per record: mean ${fmt(r.chars.mean)}, median ${fmt(r.chars.median)}, max ${r.chars.max}`,
  ]
  if (r.turns) lines.push(`  turns per conversation: mean ${fmt(r.turns.mean)}, max ${r.turns.max}`)
  if (r.problems.length) lines.push("  problems:", ...r.problems.map((p) => `    ${p}`))
  if (r.first !== undefined) lines.push(`  first valid record: ${JSON.stringify(r.first).slice(0, 300)}`)
  return lines.join("\n")
}
