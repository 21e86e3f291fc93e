/** What every reader emits: one parsed record and where it came from. */
import { Effect, Stream } from "effect"

export interface RawRecord {
  readonly file: string
  /** 1-based line where the record starts (JSONL, CSV, text) or 1-based row (Parquet). */
  readonly line: number
  readonly value: unknown
}

/**
 * Maps whole chunks of a stream at once, allowing a chunk to shrink to nothing (records dropped
 * by the skip policy). Working per chunk keeps the per-record cost of Effect out of the hot loop.
 */
export const mapChunksFiltered =
  <A, B, E2, R2>(f: (chunk: ReadonlyArray<A>) => Effect.Effect<ReadonlyArray<B>, E2, R2>) =>
  <E, R>(self: Stream.Stream<A, E, R>): Stream.Stream<B, E | E2, R | R2> =>
    self.pipe(
      Stream.mapArrayEffect((chunk) => Effect.map(f(chunk), (out) => [out] as const)),
      Stream.flattenIterable,
    )
