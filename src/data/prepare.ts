/**
 * `bunmind data prepare` as a library function: input files → validated records → token samples
 * with loss masks → shards + index.json, written atomically.
 *
 *   read (readRecords) → validate (records.ts, onBadRecord) → render/augment/tokenize in batches
 *   (samples.ts) → ShardWriter into `<outDir>.tmp-*` → index.json → rename to `outDir`
 *
 * If `outDir` already holds a shard directory it is replaced only once the new one is complete;
 * anything else at `outDir` is left alone and reported. Interruption or failure removes the temp
 * directory (a SIGKILL leaves it, without index.json, beside `outDir`).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs"
import { basename, dirname, join, resolve } from "node:path"
import { Effect, Stream } from "effect"
import { loadTokenizer, tokenizerFile } from "../tokenizer/tokenizer.ts"
import { loadTokenizerConfig, type TokenizerConfig } from "../tokenizer/chat-template.ts"
import type { AugmentOptions } from "./augment.ts"
import { BadRecordLog, type OnBadRecord } from "./bad-records.ts"
import { BadRecord, DataReadError, ShardError } from "./errors.ts"
import { readRecords } from "./read.ts"
import { validateRecords, type DataKind } from "./records.ts"
import { makeSampleBuilder, type OverLong, type SampleTokenizer, type Unlabeled } from "./samples.ts"
import { PAD_ID, SHARD_FORMAT, SHARD_SCHEMA_VERSION, ShardWriter, type ShardIndex } from "./shards.ts"

export interface PrepareOptions {
  /** One input file or several (concatenated in order); format by extension (read.ts). */
  readonly input: string | ReadonlyArray<string>
  /** tokenizer.json, or a directory holding it (and tokenizer_config.json for chat data). */
  readonly tokenizer: string
  readonly kind: DataKind
  readonly outDir: string
  /** Longest stored sample in tokens; for packing, the row length. */
  readonly maxLen: number
  /** Concatenate whole samples into fixed rows of `maxLen` tokens, a document running on into the next
   * row (meant for pretraining); nothing is truncated. */
  readonly pack?: boolean
  /** Tokens per shard file (default 2²⁵ = 32 Mi tokens, a 64 MiB ids file). */
  readonly shardTokens?: number
  /** Bad input records: skip them (counted, first warnings logged) or stop (default "skip"). */
  readonly onBadRecord?: OnBadRecord
  /** Samples over `maxLen`: truncate with a warning (default) or skip. */
  readonly overLong?: OverLong
  /** SFT/DPO samples with no assistant token within `maxLen`: keep them, as upstream does (default), or
   * skip them; counted either way (`PrepareResult.unlabeled`, index.json `unlabeled`). */
  readonly unlabeled?: Unlabeled
  readonly augment?: AugmentOptions
  /** Warnings kept and logged (default 20). */
  readonly maxWarnings?: number
  /** Log warnings through Effect's logger (default true). */
  readonly log?: boolean
  /** Records per tokenizer batch (default 256). */
  readonly batchRecords?: number
}

export interface PrepareResult {
  readonly outDir: string
  readonly index: ShardIndex
  readonly skipped: number
  /** SFT/DPO records (DPO: pairs) with no loss token within `maxLen`: kept, or under
   * `unlabeled: "skip"` skipped (and then also counted in `skipped`). */
  readonly unlabeled: number
  readonly warnings: ReadonlyArray<string>
  /** One line: "N samples, T tokens in S shards; k records skipped, w warnings", then, when there
   * are any, "; u samples without a loss token kept (…)" or "… skipped (…)". */
  readonly summary: string
}

export type PrepareError = BadRecord | DataReadError | ShardError


/** "; 3 samples without a loss token kept (as upstream; --skip-unlabeled drops them)", or "" when there are none. */
export const unlabeledSummary = (kind: DataKind, n: number, mode: Unlabeled): string => {
  if (n === 0) return ""
  const what = kind === "dpo" ? `pair${n === 1 ? "" : "s"} with a side` : `sample${n === 1 ? "" : "s"}`
  return `; ${n} ${what} without a loss token ${mode === "skip" ? "skipped (--skip-unlabeled)" : "kept (as upstream; --skip-unlabeled drops them)"}`
}

const sha256 = (path: string) => new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex")

const isShardDir = (dir: string) => {
  try {
    return JSON.parse(readFileSync(join(dir, "index.json"), "utf8")).format === SHARD_FORMAT
  } catch {
    return false
  }
}

/** Moves the finished temp directory to `outDir`, replacing an older shard directory there. */
const publish = (tmp: string, outDir: string) =>
  Effect.try({
    try: () => {
      if (existsSync(outDir)) {
        const empty = statSync(outDir).isDirectory() && readdirSync(outDir).length === 0
        if (!empty && !isShardDir(outDir))
          throw new ShardError({ dir: outDir, reason: "exists and is not a bunmind shard directory", hint: "choose another output directory or remove it" })
        const old = `${outDir}.old-${process.pid}-${Date.now()}`
        renameSync(outDir, old)
        renameSync(tmp, outDir)
        rmSync(old, { recursive: true, force: true })
      } else renameSync(tmp, outDir)
    },
    catch: (e) => (e instanceof ShardError ? e : new ShardError({ dir: outDir, reason: `cannot move the new shards into place: ${e}` })),
  })

const readConfig = (tokPath: string, required: boolean): Effect.Effect<TokenizerConfig | undefined, DataReadError> =>
  Effect.try({
    try: () => {
      const cfg = join(dirname(tokPath), "tokenizer_config.json")
      if (!required && !existsSync(cfg)) return undefined
      return loadTokenizerConfig(cfg)
    },
    catch: (e) => new DataReadError({ file: tokPath, reason: e instanceof Error ? e.message : String(e) }),
  })

export const prepareShards = (options: PrepareOptions): Effect.Effect<PrepareResult, PrepareError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const { kind, maxLen } = options
      const inputs = (typeof options.input === "string" ? [options.input] : [...options.input]).map((p) => resolve(p))
      const outDir = resolve(options.outDir)
      const shardTokens = options.shardTokens ?? 1 << 25
      if (!Number.isInteger(maxLen) || maxLen < 3)
        return yield* new ShardError({ dir: outDir, reason: `maxLen must be an integer ≥ 3, got ${maxLen}` })
      if (!Number.isInteger(shardTokens) || shardTokens < maxLen)
        return yield* new ShardError({ dir: outDir, reason: `shardTokens (${shardTokens}) must be an integer ≥ maxLen (${maxLen})` })
      for (const p of inputs)
        if (!existsSync(p)) return yield* new DataReadError({ file: p, reason: "no such file", hint: "check the --input path" })

      const tokPath = resolve(tokenizerFile(options.tokenizer))
      const tokenizer = yield* loadTokenizer(options.tokenizer).pipe(
        Effect.mapError((e) => new DataReadError({ file: tokPath, reason: `cannot load the tokenizer: ${(e as Error).message ?? e}` })),
      )
      if (tokenizer.vocabSize > 65536)
        return yield* new ShardError({
          dir: outDir,
          reason: `vocab size ${tokenizer.vocabSize} does not fit uint16 token ids`,
          hint: "shards store ids as uint16; use a tokenizer with at most 65536 tokens",
        })
      const config = yield* readConfig(tokPath, kind !== "pretrain")
      const builder = yield* Effect.try({
        try: () =>
          makeSampleBuilder(tokenizer as SampleTokenizer, config ? { config } : undefined, {
            kind,
            // packing cuts the token stream into rows, so documents are not truncated
            maxLen: options.pack ? Number.MAX_SAFE_INTEGER : maxLen,
            overLong: options.overLong ?? "truncate",
            unlabeled: options.unlabeled ?? "keep",
            augment: options.augment ?? {},
          }),
        catch: (e) => new DataReadError({ file: tokPath, reason: e instanceof Error ? e.message : String(e) }),
      })

      const bad = new BadRecordLog({ mode: options.onBadRecord ?? "skip", maxWarnings: options.maxWarnings ?? 20, log: options.log ?? true })
      mkdirSync(dirname(outDir), { recursive: true })
      const tmp = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const dir = `${outDir}.tmp-${process.pid}-${Date.now()}`
          mkdirSync(dir)
          return dir
        }),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true })),
      )
      const writer = new ShardWriter(tmp, {
        shardTokens,
        vocabSize: tokenizer.vocabSize,
        ...(options.pack ? { rowLength: maxLen } : {}),
      })
      let records = 0
      let truncated = 0
      let unlabeled = 0
      const source = Stream.fromIterable(inputs).pipe(Stream.flatMap((p) => readRecords(p, { bad })))
      yield* source.pipe(
        validateRecords(kind, bad),
        Stream.grouped(options.batchRecords ?? 256),
        Stream.runForEach((group) =>
          Effect.gen(function* () {
            for (const o of builder.build(group)) {
              const where = `${o.file}:${o.line}`
              if (o.unlabeled) unlabeled++
              if (o._tag === "Drop") {
                if (o.bad) yield* bad.bad(new BadRecord({ file: o.file, line: o.line, reason: o.reason }))
                else yield* bad.drop(`${where}: ${o.reason}`)
                continue
              }
              const kept = o.unlabeled ? " (no assistant token left: kept without a loss token, as upstream)" : ""
              if (o.truncatedFrom !== undefined) {
                truncated++
                yield* bad.warn(`${where}: ${o.truncatedFrom} tokens > max_len ${maxLen}, truncated${kept}`)
              } else if (o.unlabeled) {
                yield* bad.warn(`${where}: no assistant token found (does the chat template write ${JSON.stringify(`${builder.specials.bosToken}assistant\n`)}?): kept without a loss token`)
              }
              yield* Effect.try({
                try: () => o.samples.forEach((s) => writer.add(s)),
                catch: (e) => (e instanceof ShardError ? e : new ShardError({ dir: tmp, reason: String(e) })),
              })
              records++
            }
          }),
        ),
      )
      const shards = yield* Effect.try({
        try: () => writer.finish(),
        catch: (e) => new ShardError({ dir: tmp, reason: `writing shards failed: ${e}` }),
      })
      const { specials } = builder
      const index: ShardIndex = {
        format: SHARD_FORMAT,
        schemaVersion: SHARD_SCHEMA_VERSION,
        kind,
        layout: options.pack ? "packed" : "samples",
        ...(options.pack ? { rowLength: maxLen } : {}),
        maxLen,
        source: inputs.map((path) => ({ path, bytes: statSync(path).size })),
        tokenizer: { path: tokPath, sha256: sha256(tokPath), vocabSize: tokenizer.vocabSize, bos: specials.bos, eos: specials.eos, pad: PAD_ID },
        records,
        sequences: writer.sequences,
        tokens: writer.tokens,
        targetTokens: writer.targetTokens,
        skipped: bad.skipped,
        truncated,
        ...(kind === "pretrain" ? {} : { unlabeled }),
        options: {
          onBadRecord: bad.mode,
          overLong: options.overLong ?? "truncate",
          ...(kind === "pretrain" ? {} : { unlabeled: options.unlabeled ?? "keep" }),
          shardTokens,
          augment: kind === "pretrain" ? {} : { seed: 42, systemPromptP: 0.2, stripEmptyThinkP: 0.8, ...options.augment },
        },
        createdAt: new Date().toISOString(),
        shards,
      }
      yield* Effect.try({
        try: () => {
          writeFileSync(join(tmp, "index.json.tmp"), JSON.stringify(index, null, 1))
          renameSync(join(tmp, "index.json.tmp"), join(tmp, "index.json"))
        },
        catch: (e) => new ShardError({ dir: tmp, reason: `cannot write index.json: ${e}` }),
      })
      yield* publish(tmp, outDir)
      const summary =
        `${basename(outDir)}: ${records} ${kind === "dpo" ? "pairs" : "samples"}, ${index.tokens} tokens in ${shards.length} shard${shards.length === 1 ? "" : "s"}; ` +
        bad.summary() +
        unlabeledSummary(kind, unlabeled, options.unlabeled ?? "keep")
      return { outDir, index, skipped: bad.skipped, unlabeled, warnings: bad.warnings, summary }
    }),
  )
