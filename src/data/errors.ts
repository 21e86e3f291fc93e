/**
 * Typed errors of the data pipeline. Every message a user can hit says where (file:line, field)
 * and what happened; `hint` says what to do when there is something to do.
 */
import { Data } from "effect"

/** One input record that cannot be used: bad JSON, a missing field, a wrong role, an empty text... */
export class BadRecord extends Data.TaggedError("BadRecord")<{
  readonly file: string
  /** 1-based line (JSONL, text, CSV: the line where the record starts) or row (Parquet). */
  readonly line: number
  /** Path of the offending field, e.g. `conversations[2].role`; absent for whole-record problems. */
  readonly field?: string | undefined
  readonly reason: string
}> {
  override get message(): string {
    return `${this.file}:${this.line}: ${this.field ? `${this.field}: ` : ""}${this.reason}`
  }
}

/** The input cannot be read at all (missing file, unsupported format, unreadable Parquet footer). */
export class DataReadError extends Data.TaggedError("DataReadError")<{
  readonly file: string
  readonly reason: string
  readonly hint?: string | undefined
}> {
  override get message(): string {
    return `${this.file}: ${this.reason}${this.hint ? ` (${this.hint})` : ""}`
  }
}

/** Writing or opening token shards failed (vocab too large, corrupt index, I/O). */
export class ShardError extends Data.TaggedError("ShardError")<{
  readonly dir: string
  readonly reason: string
  readonly hint?: string | undefined
}> {
  override get message(): string {
    return `${this.dir}: ${this.reason}${this.hint ? ` (${this.hint})` : ""}`
  }
}

export type DataError = BadRecord | DataReadError
