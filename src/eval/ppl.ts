/**
 * Perplexity of a model on a text set: exp of the token-mean cross-entropy.
 *
 * Documents come from a JSONL file (MiniMind's pretrain shape, a `text` field per line), a `.txt` file
 * (documents split as `bunmind data` splits them, see src/data/text.ts), or CSV/Parquet with a `text`
 * column. Each document is tokenized as in pretraining, `[bos] + ids(text) + [eos]`, and every token after
 * the first is a target exactly once: a document longer than `maxLen` targets is cut into windows of
 * `maxLen` inputs that overlap by one token (no context carries across windows). Windows are sorted by
 * length and batched with right padding masked out, through `Model.loss` (sum of masked CE, count).
 */
import { existsSync, statSync } from "node:fs"
import { Effect, Stream } from "effect"
import type { Model } from "../model/model.ts"
import type { TokenizerConfig } from "../tokenizer/chat-template.ts"
import type { Tokenizer } from "../tokenizer/tokenizer.ts"
import { readRecords } from "../data/read.ts"
import type { DataError } from "../data/errors.ts"
import { resolveSpecials } from "../data/samples.ts"
import { EvalError } from "./ceval.ts"

export interface PplOptions {
  readonly model: Model
  readonly tokenizer: Tokenizer
  /** For the bos/eos tokens; without it MiniMind's `<|im_start|>` / `<|im_end|>` are used when present. */
  readonly chat?: TokenizerConfig
  readonly path: string
  /** Longest input row in tokens (default 512). */
  readonly maxLen?: number
  readonly batchSize?: number
  readonly onProgress?: (doneTokens: number, totalTokens: number) => void
}

export interface PplResult {
  readonly file: string
  readonly documents: number
  readonly windows: number
  /** Number of predicted (counted) tokens. */
  readonly tokens: number
  /** Sum of the negative log-likelihoods over the counted tokens (nats). */
  readonly nllSum: number
  readonly meanNll: number
  readonly ppl: number
}

/** Documents' text from any supported file; a record without a string `text` is an error naming file:line. */
export const readDocuments = (path: string): Effect.Effect<string[], EvalError | DataError> =>
  Effect.gen(function* () {
    if (!existsSync(path)) return yield* Effect.fail(new EvalError({ message: `${path}: no such file` }))
    if (statSync(path).isDirectory()) return yield* Effect.fail(new EvalError({ message: `${path}: is a directory; expected a .jsonl or .txt file` }))
    const docs: string[] = []
    yield* readRecords(path).pipe(
      Stream.runForEach((r) => {
        const v = r.value as { text?: unknown } | null
        if (v === null || typeof v !== "object" || typeof v.text !== "string") {
          return Effect.fail(new EvalError({ message: `${r.file}:${r.line}: expected an object with a string "text" field (MiniMind pretrain shape)` }))
        }
        if (v.text.trim() !== "") docs.push(v.text)
        return Effect.void
      }),
    )
    if (docs.length === 0) return yield* Effect.fail(new EvalError({ message: `${path}: no documents (the file is empty or every text is blank)` }))
    return docs
  })

/** `[bos] + ids + [eos]` cut into windows of at most `maxLen + 1` tokens overlapping by one. */
export function windows(sample: Uint32Array, maxLen: number): Uint32Array[] {
  const out: Uint32Array[] = []
  for (let s = 0; s + 1 < sample.length; s += maxLen) out.push(sample.subarray(s, Math.min(s + maxLen + 1, sample.length)))
  return out
}

/** Masked CE over windows, batched: rows sorted by length, right-padded, padding masked. */
export function windowLoss(
  model: Pick<Model, "loss">,
  rows: readonly Uint32Array[],
  batchSize: number,
  onBatch?: (doneTargets: number) => void,
): { sum: number; count: number } {
  const order = rows.map((_, i) => i).sort((a, b) => rows[a]!.length - rows[b]!.length || a - b)
  let sum = 0
  let count = 0
  for (let k = 0; k < order.length; k += batchSize) {
    const batch = order.slice(k, k + batchSize)
    const b = batch.length
    const t = Math.max(...batch.map((i) => rows[i]!.length)) - 1
    const ids = new Uint32Array(b * t)
    const targets = new Uint32Array(b * t)
    const mask = new Float32Array(b * t)
    batch.forEach((i, r) => {
      const w = rows[i]!
      ids.set(w.subarray(0, w.length - 1), r * t)
      targets.set(w.subarray(1), r * t)
      mask.fill(1, r * t, r * t + w.length - 1)
    })
    const l = model.loss(ids, targets, mask, b)
    sum += l.sum
    count += l.count
    onBatch?.(count)
  }
  return { sum, count }
}

export const runPpl = (o: PplOptions): Effect.Effect<PplResult, EvalError | DataError | Error> =>
  Effect.gen(function* () {
    const maxLen = o.maxLen ?? 512
    const batchSize = o.batchSize ?? 16
    const ctx = o.model.config.max_position_embeddings
    if (!Number.isInteger(maxLen) || maxLen < 1 || maxLen > ctx) {
      return yield* Effect.fail(new EvalError({ message: `--max-len ${maxLen}: expected 1..${ctx} (the model's max_position_embeddings)` }))
    }
    if (!Number.isInteger(batchSize) || batchSize < 1) return yield* Effect.fail(new EvalError({ message: `--batch-size ${batchSize}: expected a positive integer` }))
    const docs = yield* readDocuments(o.path)
    const result = yield* Effect.try({
      try: () => {
        const sp = resolveSpecials(o.tokenizer, o.chat ? { config: o.chat } : undefined)
        const rows: Uint32Array[] = []
        for (let k = 0; k < docs.length; k += 1024) {
          for (const ids of o.tokenizer.encodeBatch(docs.slice(k, k + 1024))) {
            const sample = new Uint32Array(ids.length + 2)
            sample[0] = sp.bos
            sample.set(ids, 1)
            sample[ids.length + 1] = sp.eos
            rows.push(...windows(sample, maxLen))
          }
        }
        const totalTargets = rows.reduce((a, r) => a + r.length - 1, 0)
        const { sum, count } = windowLoss(o.model, rows, batchSize, (d) => o.onProgress?.(d, totalTargets))
        const meanNll = sum / count
        return { file: o.path, documents: docs.length, windows: rows.length, tokens: count, nllSum: sum, meanNll, ppl: Math.exp(meanNll) }
      },
      catch: (e) => (e instanceof Error ? e : new EvalError({ message: String(e) })),
    })
    return result
  })
