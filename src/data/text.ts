/**
 * Plain text (.txt) as pretraining documents `{ text }`. The rule:
 * - if the file contains the marker `<|endoftext|>` (looked for in its first MiB), documents are
 *   separated by that marker only (anywhere in a line; blank lines stay inside documents);
 * - otherwise a document is a run of non-blank lines, and one or more blank (whitespace-only) lines
 *   separate documents.
 * Each document is trimmed; empty documents are dropped. A document's line is the line of its first
 * non-blank text. Override the detection with `separator`.
 */
import { openSync, readSync, closeSync } from "node:fs"
import { Effect, Stream } from "effect"
import { DEFAULT_CHUNK_BYTES, readLines } from "./chunks.ts"
import { DataReadError, type DataError } from "./errors.ts"
import type { ReadOptions } from "./jsonl.ts"
import { mapChunksFiltered, type RawRecord } from "./raw-record.ts"

export const END_OF_TEXT = "<|endoftext|>"
export type TextSeparator = "auto" | "blank-line" | "endoftext"

const sniff = (path: string) =>
  Effect.try({
    try: () => {
      const fd = openSync(path, "r")
      try {
        const buf = new Uint8Array(1 << 20)
        const n = readSync(fd, buf, 0, buf.length, 0)
        return new TextDecoder().decode(buf.subarray(0, n)).includes(END_OF_TEXT) ? "endoftext" : "blank-line"
      } finally {
        closeSync(fd)
      }
    },
    catch: (e) => new DataReadError({ file: path, reason: `cannot open: ${e instanceof Error ? e.message : e}` }),
  })

export const readText = (
  path: string,
  options: ReadOptions & { readonly separator?: TextSeparator } = {},
): Stream.Stream<RawRecord, DataError> =>
  Stream.unwrap(
    Effect.gen(function* () {
      const mode = options.separator && options.separator !== "auto" ? options.separator : yield* sniff(path)
      let parts: string[] = []
      let startLine = 0
      const close = (out: RawRecord[]) => {
        const text = parts.join("\n").trim()
        if (text !== "") out.push({ file: path, line: startLine, value: { text } })
        parts = []
        startLine = 0
      }
      const add = (piece: string, line: number) => {
        if (startLine === 0 && piece.trim() === "") return
        if (startLine === 0) startLine = line
        parts.push(piece)
      }
      const onLine = (line: number, text: string, out: RawRecord[]) => {
        if (mode === "blank-line") {
          if (text.trim() === "") close(out)
          else add(text, line)
          return
        }
        const pieces = text.split(END_OF_TEXT)
        for (let k = 0; k < pieces.length; k++) {
          if (k > 0) close(out)
          add(pieces[k]!, line)
        }
      }
      return readLines(path, options.chunkBytes ?? DEFAULT_CHUNK_BYTES).pipe(
        Stream.map((l): { line: number; text: string } | null => l),
        Stream.concat(Stream.make(null)),
        mapChunksFiltered((lines) =>
          Effect.sync(() => {
            const out: RawRecord[] = []
            for (const l of lines) {
              if (l === null) close(out)
              else onLine(l.line, l.text, out)
            }
            return out
          }),
        ),
      )
    }),
  )
