/**
 * Token shards on disk, and reading them back memory-mapped.
 *
 * A shard directory holds, per shard NNNNN:
 *   shard-NNNNN.ids.u16       token ids, uint16 little-endian (vocab must be ≤ 65536)
 *   shard-NNNNN.mask.u8       loss mask, one byte per token (masks.ts: mask[t] = 1 ⇔ ids[t] is a target)
 *   shard-NNNNN.offsets.u32   (layout "samples") k+1 start offsets of the shard's k sequences
 * and one `index.json` (`ShardIndex`): counts, vocab, tokenizer hash, source, kind, skips, layout.
 * Layout "packed" stores fixed-length rows of `rowLength` tokens and no offsets file.
 * DPO stores each record as two consecutive sequences: chosen (2i), rejected (2i + 1).
 * Offsets live in binary files rather than in index.json so the index stays small at 10⁷ samples.
 *
 * Writing is atomic (prepare.ts): everything goes to a sibling temp directory, index.json last,
 * then the directory is renamed into place, so a prepare that dies leaves no half index.
 */
import { closeSync, existsSync, openSync, readFileSync, writeSync } from "node:fs"
import { join } from "node:path"
import { Effect } from "effect"
import { ShardError } from "./errors.ts"
import type { TokenSample } from "./masks.ts"
import type { DataKind } from "./records.ts"

export const SHARD_FORMAT = "bunmind-shards"
export const SHARD_SCHEMA_VERSION = 1
export const PAD_ID = 0

export interface ShardFile {
  readonly ids: string
  readonly mask: string
  /** Absent in the packed layout. */
  readonly offsets?: string
  /** Sequences (samples or rows) in this shard. */
  readonly sequences: number
  readonly tokens: number
}

export interface ShardIndex {
  readonly format: typeof SHARD_FORMAT
  readonly schemaVersion: number
  readonly kind: DataKind
  readonly layout: "samples" | "packed"
  /** Packed layout: tokens per row. */
  readonly rowLength?: number
  readonly maxLen: number
  /** Input files (absolute paths) and their sizes in bytes. */
  readonly source: ReadonlyArray<{ readonly path: string; readonly bytes: number }>
  readonly tokenizer: {
    readonly path: string
    readonly sha256: string
    readonly vocabSize: number
    readonly bos: number
    readonly eos: number
    readonly pad: number
  }
  /** Input records that became samples (DPO: pairs). */
  readonly records: number
  /** Stored sequences (DPO: 2 × records; packed: rows). */
  readonly sequences: number
  /** Tokens stored, padding of packed rows included. */
  readonly tokens: number
  /** Mask-1 positions a trainer uses (t ≥ 1 in each sequence). */
  readonly targetTokens: number
  readonly skipped: number
  readonly truncated: number
  /** SFT/DPO: records (DPO: pairs) with no loss token within maxLen, kept or skipped as
   * `options.unlabeled` says (absent in pretrain shards and in older indexes). */
  readonly unlabeled?: number
  readonly options: Readonly<Record<string, unknown>>
  readonly createdAt: string
  readonly shards: ReadonlyArray<ShardFile>
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1

const shardName = (n: number, ext: string) => `shard-${String(n).padStart(5, "0")}.${ext}`

/** Appends sequences to shard files, rolling over at `shardTokens`. Synchronous, buffered. */
export class ShardWriter {
  private readonly shards: ShardFile[] = []
  private current: { n: number; ids: number; mask: number; offsets: number | undefined; tokens: number; sequences: number } | undefined
  private idsBuf: Uint16Array
  private maskBuf: Uint8Array
  private fill = 0
  private offsetList: number[] = []
  private row: { ids: Uint16Array; mask: Uint8Array; fill: number } | undefined
  targetTokens = 0

  constructor(
    private readonly dir: string,
    private readonly options: { readonly shardTokens: number; readonly vocabSize: number; readonly rowLength?: number },
  ) {
    if (!LITTLE_ENDIAN) throw new ShardError({ dir, reason: "big-endian hosts are not supported" })
    const bufTokens = Math.min(1 << 20, options.shardTokens)
    this.idsBuf = new Uint16Array(bufTokens)
    this.maskBuf = new Uint8Array(bufTokens)
    if (options.rowLength !== undefined) {
      const r = options.rowLength
      this.row = { ids: new Uint16Array(r), mask: new Uint8Array(r), fill: 0 }
    }
  }

  /** Adds one sample (samples layout) or streams its tokens into rows (packed layout). */
  add(sample: TokenSample): void {
    const { ids, mask } = sample
    for (let t = 0; t < ids.length; t++)
      if (ids[t]! >= this.options.vocabSize || ids[t]! > 0xffff)
        throw new ShardError({ dir: this.dir, reason: `token id ${ids[t]} does not fit the vocab (${this.options.vocabSize}) or uint16` })
    if (this.row === undefined) {
      this.writeSequence(ids, mask)
      return
    }
    const row = this.row
    for (let t = 0; t < ids.length; ) {
      const n = Math.min(ids.length - t, row.ids.length - row.fill)
      row.ids.set(ids.subarray(t, t + n), row.fill)
      row.mask.set(mask.subarray(t, t + n), row.fill)
      row.fill += n
      t += n
      if (row.fill === row.ids.length) this.flushRow()
    }
  }

  /** Flushes everything; returns the shard list for index.json. */
  finish(): ShardFile[] {
    if (this.row && this.row.fill > 0) {
      this.row.ids.fill(PAD_ID, this.row.fill)
      this.row.mask.fill(0, this.row.fill)
      this.flushRow()
    }
    this.closeShard()
    return this.shards
  }

  get sequences(): number {
    return this.shards.reduce((n, s) => n + s.sequences, 0) + (this.current?.sequences ?? 0)
  }
  get tokens(): number {
    return this.shards.reduce((n, s) => n + s.tokens, 0) + (this.current?.tokens ?? 0)
  }

  private flushRow() {
    const row = this.row!
    this.writeSequence(row.ids, row.mask)
    row.fill = 0
  }

  private writeSequence(ids: ArrayLike<number>, mask: Uint8Array) {
    if (this.current && this.current.tokens + ids.length > this.options.shardTokens && this.current.sequences > 0) this.closeShard()
    const cur = this.current ?? this.openShard()
    for (let t = 1; t < mask.length; t++) this.targetTokens += mask[t]!
    let t = 0
    while (t < ids.length) {
      const n = Math.min(ids.length - t, this.idsBuf.length - this.fill)
      for (let k = 0; k < n; k++) this.idsBuf[this.fill + k] = ids[t + k]!
      this.maskBuf.set(mask.subarray(t, t + n), this.fill)
      this.fill += n
      t += n
      if (this.fill === this.idsBuf.length) this.flushBuffers()
    }
    cur.tokens += ids.length
    cur.sequences++
    if (cur.offsets !== undefined) this.offsetList.push(cur.tokens)
  }

  private openShard() {
    const n = this.shards.length
    const packed = this.row !== undefined
    this.current = {
      n,
      ids: openSync(join(this.dir, shardName(n, "ids.u16")), "w"),
      mask: openSync(join(this.dir, shardName(n, "mask.u8")), "w"),
      offsets: packed ? undefined : openSync(join(this.dir, shardName(n, "offsets.u32")), "w"),
      tokens: 0,
      sequences: 0,
    }
    this.offsetList = packed ? [] : [0]
    return this.current
  }

  private flushBuffers() {
    const cur = this.current!
    if (this.fill > 0) {
      writeSync(cur.ids, new Uint8Array(this.idsBuf.buffer, 0, this.fill * 2))
      writeSync(cur.mask, this.maskBuf.subarray(0, this.fill))
    }
    this.fill = 0
    if (cur.offsets !== undefined && this.offsetList.length > 0) {
      writeSync(cur.offsets, new Uint8Array(new Uint32Array(this.offsetList).buffer))
      this.offsetList = []
    }
  }

  private closeShard() {
    const cur = this.current
    if (!cur) return
    this.flushBuffers()
    closeSync(cur.ids)
    closeSync(cur.mask)
    if (cur.offsets !== undefined) closeSync(cur.offsets)
    this.shards.push({
      ids: shardName(cur.n, "ids.u16"),
      mask: shardName(cur.n, "mask.u8"),
      ...(cur.offsets !== undefined ? { offsets: shardName(cur.n, "offsets.u32") } : {}),
      sequences: cur.sequences,
      tokens: cur.tokens,
    })
    this.current = undefined
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

/** A batch as the trainer consumes it; row-major [B, T]. */
export interface Batch {
  readonly batchSize: number
  readonly seqLen: number
  /** Inputs: sequence positions 0..T-1 (pad 0). */
  readonly ids: Uint32Array
  /** Targets: sequence positions 1..T (pad 0). */
  readonly targets: Uint32Array
  /** 1 where `targets` counts in the loss (the stored mask at positions 1..T), 0 on padding. */
  readonly mask: Float32Array
}

/** The sequences of DPO pairs `indices` in a shard set: pair i is sequence 2i (chosen) and 2i + 1 (rejected). */
export const pairSequences = (indices: ArrayLike<number>): { chosen: number[]; rejected: number[] } => ({
  chosen: Array.from(indices, (i) => 2 * i),
  rejected: Array.from(indices, (i) => 2 * i + 1),
})

export interface ShardSet {
  readonly dir: string
  readonly index: ShardIndex
  /** Training examples: sequences, or pairs for DPO. What a BatchSampler draws from. */
  readonly numSamples: number
  readonly numSequences: number
  /** Sequence `i` as views into the mapped files (no copy). */
  sequence(i: number): { readonly ids: Uint16Array; readonly mask: Uint8Array }
  /** Batch of examples (pretrain/SFT); for DPO use `getPairBatch`. */
  getBatch(indices: ArrayLike<number>, seqLen: number): Batch
  /** DPO: chosen and rejected batches for the given pair indices. */
  getPairBatch(indices: ArrayLike<number>, seqLen: number): { readonly chosen: Batch; readonly rejected: Batch }
  /** Rows of stored sequences `seqs` (DPO: pair i is sequences 2i chosen, 2i + 1 rejected), in that order, as one batch. */
  getSequences(seqs: ArrayLike<number>, seqLen: number): Batch
}

const mapFile = (dir: string, name: string): Uint8Array => {
  const path = join(dir, name)
  const size = Bun.file(path).size
  return size === 0 ? new Uint8Array(0) : Bun.mmap(path, { shared: false })
}

const checkIndex = (dir: string, raw: unknown): ShardIndex => {
  const i = raw as Partial<ShardIndex> | null
  if (!i || i.format !== SHARD_FORMAT)
    throw new ShardError({ dir, reason: "index.json is not a bunmind shard index", hint: "prepare the data with `bunmind data prepare`" })
  if (i.schemaVersion !== SHARD_SCHEMA_VERSION)
    throw new ShardError({
      dir,
      reason: `shard schema version ${i.schemaVersion}, this bunmind reads version ${SHARD_SCHEMA_VERSION}`,
      hint: "prepare the data again",
    })
  return i as ShardIndex
}

/** Opens a shard directory: reads index.json and memory-maps every shard file. */
export const openShards = (dir: string): Effect.Effect<ShardSet, ShardError> =>
  Effect.try({
    try: (): ShardSet => {
      const indexPath = join(dir, "index.json")
      if (!existsSync(indexPath))
        throw new ShardError({ dir, reason: "no index.json here", hint: "prepare the data with `bunmind data prepare`, or point at its output directory" })
      const index = checkIndex(dir, JSON.parse(readFileSync(indexPath, "utf8")))
      const packed = index.layout === "packed"
      const files = index.shards.map((s) => {
        const idsBytes = mapFile(dir, s.ids)
        const mask = mapFile(dir, s.mask)
        if (idsBytes.length !== s.tokens * 2 || mask.length !== s.tokens)
          throw new ShardError({ dir, reason: `${s.ids} / ${s.mask} do not hold ${s.tokens} tokens as index.json says`, hint: "the directory is damaged; prepare the data again" })
        const ids = new Uint16Array(idsBytes.buffer, idsBytes.byteOffset, s.tokens)
        let offsets: Uint32Array
        if (packed) {
          const r = index.rowLength!
          offsets = Uint32Array.from({ length: s.sequences + 1 }, (_, k) => k * r)
        } else {
          const ob = mapFile(dir, s.offsets!)
          if (ob.length !== (s.sequences + 1) * 4 && !(s.sequences === 0 && ob.length === 0))
            throw new ShardError({ dir, reason: `${s.offsets} does not hold ${s.sequences + 1} offsets`, hint: "prepare the data again" })
          offsets = new Uint32Array(ob.buffer, ob.byteOffset, ob.length / 4)
        }
        return { ids, mask, offsets, sequences: s.sequences }
      })
      const starts: number[] = [0]
      for (const f of files) starts.push(starts[starts.length - 1]! + f.sequences)
      const numSequences = starts[starts.length - 1]!
      const locate = (i: number) => {
        if (!Number.isInteger(i) || i < 0 || i >= numSequences)
          throw new RangeError(`sequence ${i} out of range 0..${numSequences - 1}`)
        let lo = 0
        let hi = files.length - 1
        while (lo < hi) {
          const mid = (lo + hi + 1) >> 1
          if (starts[mid]! <= i) lo = mid
          else hi = mid - 1
        }
        return { f: files[lo]!, k: i - starts[lo]! }
      }
      const sequence = (i: number) => {
        const { f, k } = locate(i)
        const a = f.offsets[k]!
        const b = f.offsets[k + 1]!
        return { ids: f.ids.subarray(a, b), mask: f.mask.subarray(a, b) }
      }
      const fillBatch = (seqs: ArrayLike<number>, seqLen: number): Batch => {
        const B = seqs.length
        const ids = new Uint32Array(B * seqLen)
        const targets = new Uint32Array(B * seqLen)
        const mask = new Float32Array(B * seqLen)
        for (let b = 0; b < B; b++) {
          const s = sequence(seqs[b]!)
          const n = Math.min(s.ids.length - 1, seqLen)
          const row = b * seqLen
          for (let t = 0; t < n; t++) {
            targets[row + t] = s.ids[t + 1]!
            mask[row + t] = s.mask[t + 1]!
          }
          // Inputs include the last token (it has no target), as upstream's batches do: it does not
          // change any counted logit (attention is causal), but an MoE router sees it in its aux loss.
          for (let t = 0; t < Math.min(s.ids.length, seqLen); t++) ids[row + t] = s.ids[t]!
        }
        return { batchSize: B, seqLen, ids, targets, mask }
      }
      const pairs = index.kind === "dpo"
      const numSamples = pairs ? numSequences / 2 : numSequences
      return {
        dir,
        index,
        numSamples,
        numSequences,
        sequence,
        getBatch: (indices, seqLen) => {
          if (pairs) throw new Error("DPO shards hold pairs: use getPairBatch")
          return fillBatch(indices, seqLen)
        },
        getPairBatch: (indices, seqLen) => {
          if (!pairs) throw new Error(`${index.kind} shards hold single sequences: use getBatch`)
          const { chosen, rejected } = pairSequences(indices)
          return { chosen: fillBatch(chosen, seqLen), rejected: fillBatch(rejected, seqLen) }
        },
        getSequences: fillBatch,
      }
    },
    catch: (e) => (e instanceof ShardError ? e : new ShardError({ dir, reason: e instanceof Error ? e.message : String(e) })),
  })
