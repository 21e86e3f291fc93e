/**
 * `readRecords(path)`: one entry point for every input format, chosen by extension:
 * .jsonl / .ndjson / .json (JSON Lines) · .csv · .parquet · .txt (see text.ts for the document rule).
 * A `.json` file holding one JSON array is refused with a hint, since it cannot be streamed.
 */
import { openSync, readSync, closeSync } from "node:fs"
import { extname } from "node:path"
import { Effect, Stream } from "effect"
import { readCsv } from "./csv.ts"
import { DataReadError, type DataError } from "./errors.ts"
import { readJsonl, type ReadOptions } from "./jsonl.ts"
import { readParquet } from "./parquet.ts"
import type { RawRecord } from "./raw-record.ts"
import { readText, type TextSeparator } from "./text.ts"

export type InputFormat = "jsonl" | "csv" | "parquet" | "text"

export const formatOf = (path: string): InputFormat | undefined => {
  switch (extname(path).toLowerCase()) {
    case ".jsonl":
    case ".ndjson":
    case ".json":
      return "jsonl"
    case ".csv":
      return "csv"
    case ".parquet":
      return "parquet"
    case ".txt":
      return "text"
    default:
      return undefined
  }
}

const startsWithArray = (path: string): boolean => {
  try {
    const fd = openSync(path, "r")
    try {
      const buf = new Uint8Array(4096)
      const n = readSync(fd, buf, 0, buf.length, 0)
      return new TextDecoder().decode(buf.subarray(0, n)).trimStart().startsWith("[")
    } finally {
      closeSync(fd)
    }
  } catch {
    return false // the reader reports the real open error
  }
}

export const readRecords = (
  path: string,
  options: ReadOptions & { readonly separator?: TextSeparator } = {},
): Stream.Stream<RawRecord, DataError> =>
  Stream.unwrap(
    Effect.suspend((): Effect.Effect<Stream.Stream<RawRecord, DataError>, DataReadError> => {
      const format = formatOf(path)
      switch (format) {
        case "jsonl":
          if (path.toLowerCase().endsWith(".json") && startsWithArray(path))
            return Effect.fail(
              new DataReadError({
                file: path,
                reason: "this .json file holds one JSON array, which cannot be streamed",
                hint: "convert it to JSON Lines, e.g. `jq -c '.[]' in.json > out.jsonl`",
              }),
            )
          return Effect.succeed(readJsonl(path, options))
        case "csv":
          return Effect.succeed(readCsv(path, options))
        case "parquet":
          return Effect.succeed(readParquet(path))
        case "text":
          return Effect.succeed(readText(path, options))
        default:
          return Effect.fail(
            new DataReadError({
              file: path,
              reason: `unknown input format "${extname(path)}"`,
              hint: "use .jsonl, .json (JSON Lines), .csv, .parquet or .txt",
            }),
          )
      }
    }),
  )
