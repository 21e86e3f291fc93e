/**
 * JSON Lines: one JSON value per line; blank lines are ignored. A line that does not parse is a
 * `BadRecord` naming file:line and the parser's message, handled by the `onBadRecord` policy.
 */
import { Effect, Stream } from "effect"
import { BadRecordLog } from "./bad-records.ts"
import { DEFAULT_CHUNK_BYTES, readLines } from "./chunks.ts"
import { BadRecord, type DataError } from "./errors.ts"
import { mapChunksFiltered, type RawRecord } from "./raw-record.ts"

export interface ReadOptions {
  /** Where bad records go; default: a fresh log in `fail` mode. */
  readonly bad?: BadRecordLog
  readonly chunkBytes?: number
}

export const readJsonl = (path: string, options: ReadOptions = {}): Stream.Stream<RawRecord, DataError> => {
  const bad = options.bad ?? new BadRecordLog({ mode: "fail" })
  return readLines(path, options.chunkBytes ?? DEFAULT_CHUNK_BYTES).pipe(
    mapChunksFiltered((lines) =>
      Effect.gen(function* () {
        const out: RawRecord[] = []
        for (const { line, text } of lines) {
          if (text.trim() === "") continue
          try {
            out.push({ file: path, line, value: JSON.parse(text) })
          } catch (e) {
            const reason = `invalid JSON: ${e instanceof Error ? e.message : String(e)}`
            yield* bad.bad(new BadRecord({ file: path, line, reason }))
          }
        }
        return out
      }),
    ),
  )
}
