/**
 * RFC 4180 CSV, streamed: a header row names the columns; fields may be quoted, and quoted fields
 * may hold commas, newlines and doubled quotes (""). CRLF or LF line ends. Each record is an
 * object keyed by the header, numbered by the physical line where it starts (the header is line 1).
 * Lenient where pandas and spreadsheets are: a stray quote inside an unquoted field is kept as text.
 * A row with a different number of fields than the header, or a quote left open at the end of the
 * file, is a `BadRecord`. Blank lines are skipped.
 */
import { Effect, Stream } from "effect"
import { BadRecordLog } from "./bad-records.ts"
import { DEFAULT_CHUNK_BYTES, readTextChunks } from "./chunks.ts"
import { BadRecord, DataReadError, type DataError } from "./errors.ts"
import type { ReadOptions } from "./jsonl.ts"
import { mapChunksFiltered, type RawRecord } from "./raw-record.ts"

export interface CsvRow {
  /** 1-based physical line where the row starts. */
  readonly line: number
  readonly fields: string[]
}

const enum State {
  FieldStart,
  Unquoted,
  Quoted,
  QuoteInQuoted,
}

/** An incremental RFC 4180 tokenizer: feed text chunks with `push`, then call `end`. */
export class CsvParser {
  private state = State.FieldStart
  private field = ""
  private row: string[] = []
  private line = 1
  private rowLine = 1

  push(text: string, out: CsvRow[]): void {
    const n = text.length
    let i = 0
    while (i < n) {
      const c = text.charCodeAt(i)
      switch (this.state) {
        case State.Quoted: {
          const q = text.indexOf('"', i)
          const stop = q < 0 ? n : q
          const piece = text.slice(i, stop)
          for (let k = piece.indexOf("\n"); k >= 0; k = piece.indexOf("\n", k + 1)) this.line++
          this.field += piece
          if (q >= 0) this.state = State.QuoteInQuoted
          i = stop + 1
          continue
        }
        case State.QuoteInQuoted:
          if (c === 34) {
            this.field += '"'
            this.state = State.Quoted
          } else if (c === 44) this.endField()
          else if (c === 10) this.endRow(out)
          else if (c !== 13) {
            this.field += text[i]
            this.state = State.Unquoted
          }
          break
        case State.FieldStart:
          if (c === 34) {
            this.state = State.Quoted
            break
          }
        // falls through: an unquoted field starts here
        case State.Unquoted:
          if (c === 44) this.endField()
          else if (c === 10) this.endRow(out)
          else if (c !== 13) {
            this.field += text[i]
            this.state = State.Unquoted
          }
          break
      }
      i++
    }
  }

  /** Flushes the last row; returns the start line of an unterminated quoted field, if any. */
  end(out: CsvRow[]): number | undefined {
    if (this.state === State.Quoted) return this.rowLine
    if (this.state !== State.FieldStart || this.row.length > 0) {
      this.row.push(this.field)
      this.emit(out)
    }
    return undefined
  }

  private endField() {
    this.row.push(this.field)
    this.field = ""
    this.state = State.FieldStart
  }

  private endRow(out: CsvRow[]) {
    const blank = this.row.length === 0 && this.state === State.FieldStart
    if (!blank) {
      this.row.push(this.field)
      this.emit(out)
    }
    this.line++
    this.rowLine = this.line
  }

  private emit(out: CsvRow[]) {
    out.push({ line: this.rowLine, fields: this.row })
    this.row = []
    this.field = ""
    this.state = State.FieldStart
  }
}

/** CSV rows as records keyed by the header's column names. */
export const readCsv = (path: string, options: ReadOptions = {}): Stream.Stream<RawRecord, DataError> =>
  Stream.suspend(() => {
    const bad = options.bad ?? new BadRecordLog({ mode: "fail" })
    const parser = new CsvParser()
    let header: string[] | undefined
    const toRecords = (rows: CsvRow[]) =>
      Effect.gen(function* () {
        const out: RawRecord[] = []
        for (const row of rows) {
          if (header === undefined) {
            header = row.fields.map((h) => h.trim())
            continue
          }
          if (row.fields.length !== header.length) {
            yield* bad.bad(
              new BadRecord({
                file: path,
                line: row.line,
                reason: `expected ${header.length} fields (${header.join(",")}), got ${row.fields.length}; quote fields that contain commas or newlines`,
              }),
            )
            continue
          }
          const value: Record<string, string> = {}
          for (let k = 0; k < header.length; k++) value[header[k]!] = row.fields[k]!
          out.push({ file: path, line: row.line, value })
        }
        return out
      })
    return readTextChunks(path, options.chunkBytes ?? DEFAULT_CHUNK_BYTES).pipe(
      Stream.map((text): string | null => text),
      Stream.concat(Stream.make(null)),
      mapChunksFiltered((texts) =>
        Effect.gen(function* () {
          const rows: CsvRow[] = []
          let unterminated: number | undefined
          for (const text of texts) {
            if (text === null) unterminated = parser.end(rows)
            else parser.push(text, rows)
          }
          const out = yield* toRecords(rows)
          if (unterminated !== undefined)
            yield* bad.bad(
              new BadRecord({ file: path, line: unterminated, reason: "quoted field never closed before the end of the file" }),
            )
          if (texts.includes(null) && header === undefined)
            return yield* Effect.fail(new DataReadError({ file: path, reason: "empty CSV: no header row" }))
          return out
        }),
      ),
    )
  })
