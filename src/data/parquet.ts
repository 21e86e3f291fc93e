/**
 * Parquet via hyparquet, one row group at a time (the footer is read once; each group's column
 * chunks are read with ranged reads, so memory follows the largest row group, not the file).
 * Snappy is built in; gzip, zstd, brotli and lz4 come from hyparquet-compressors.
 * A record's `line` is its 1-based row number in the file.
 */
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, type AsyncBuffer, type FileMetaData } from "hyparquet"
import { compressors } from "hyparquet-compressors"
import { Effect, Option, Stream } from "effect"
import { DataReadError, type DataError } from "./errors.ts"
import type { RawRecord } from "./raw-record.ts"

const failure = (path: string, what: string) => (e: unknown) =>
  new DataReadError({ file: path, reason: `${what}: ${e instanceof Error ? e.message : String(e)}` })

/** Makes values plain JSON-like data: bigint → number when safe (row counts, int64 columns). */
const plain = (v: unknown): unknown => {
  if (typeof v === "bigint") return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString()
  if (Array.isArray(v)) return v.map(plain)
  if (v !== null && typeof v === "object" && !(v instanceof Uint8Array) && !(v instanceof Date)) {
    const o: Record<string, unknown> = {}
    for (const [k, x] of Object.entries(v)) o[k] = plain(x)
    return o
  }
  return v
}

export const readParquet = (path: string, options: { readonly columns?: string[] } = {}): Stream.Stream<RawRecord, DataError> =>
  Stream.unwrap(
    Effect.gen(function* () {
      const file: AsyncBuffer = yield* Effect.tryPromise({ try: () => asyncBufferFromFile(path), catch: failure(path, "cannot open") })
      const metadata: FileMetaData = yield* Effect.tryPromise({
        try: () => parquetMetadataAsync(file),
        catch: failure(path, "not a readable Parquet file"),
      })
      const groups: Array<{ start: number; end: number }> = []
      let start = 0
      for (const rg of metadata.row_groups) {
        const end = start + Number(rg.num_rows)
        if (end > start) groups.push({ start, end })
        start = end
      }
      return Stream.paginate(0, (g: number) =>
        g >= groups.length
          ? Effect.succeed([[], Option.none<number>()] as const)
          : Effect.tryPromise({
              try: () =>
                parquetReadObjects({
                  file,
                  metadata,
                  compressors,
                  rowStart: groups[g]!.start,
                  rowEnd: groups[g]!.end,
                  ...(options.columns ? { columns: options.columns } : {}),
                }),
              catch: failure(path, `row group ${g} unreadable`),
            }).pipe(
              Effect.map((rows) => {
                const base = groups[g]!.start
                const out: RawRecord[] = rows.map((row, k) => ({ file: path, line: base + k + 1, value: plain(row) }))
                return [out, g + 1 < groups.length ? Option.some(g + 1) : Option.none<number>()] as const
              }),
            ),
      )
    }),
  )
