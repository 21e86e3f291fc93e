/**
 * The `onBadRecord` policy. `fail` stops the stream at the first bad record; `skip` drops it,
 * counts it, keeps the first `maxWarnings` messages (with file:line) and logs them as warnings.
 * One log is shared by every stage of a pipeline (reading, validation, tokenization), so the
 * count at the end covers all of them.
 */
import { Effect } from "effect"
import type { BadRecord } from "./errors.ts"

export type OnBadRecord = "skip" | "fail"

export class BadRecordLog {
  readonly mode: OnBadRecord
  readonly maxWarnings: number
  /** Records dropped under `skip`. */
  skipped = 0
  /** Records kept but changed (for example truncated to max_len); not counted in `skipped`. */
  warned = 0
  /** The first `maxWarnings` messages, skips and other warnings together, in order. */
  readonly warnings: string[] = []
  private readonly log: boolean

  constructor(options: { mode?: OnBadRecord; maxWarnings?: number; log?: boolean } = {}) {
    this.mode = options.mode ?? "fail"
    this.maxWarnings = options.maxWarnings ?? 20
    this.log = options.log ?? true
  }

  /** Under `fail`, fails with the record; under `skip`, counts it and succeeds. */
  bad(record: BadRecord): Effect.Effect<void, BadRecord> {
    if (this.mode === "fail") return Effect.fail(record)
    this.skipped++
    return this.note(`skipped ${record.message}`)
  }

  /** Drops a record whatever the mode (a policy choice, e.g. `overLong: "skip"`), and counts it. */
  drop(message: string): Effect.Effect<void> {
    this.skipped++
    return this.note(`skipped ${message}`)
  }

  /** A record that is kept but changed. */
  warn(message: string): Effect.Effect<void> {
    this.warned++
    return this.note(message)
  }

  /** One line for the end of a run: "3 records skipped, 1 warning (first 4 shown above)". */
  summary(): string {
    const shown = this.warnings.length
    const total = this.skipped + this.warned
    return `${this.skipped} record${this.skipped === 1 ? "" : "s"} skipped, ${this.warned} warning${
      this.warned === 1 ? "" : "s"
    }${total > shown ? ` (first ${shown} shown)` : ""}`
  }

  private note(message: string): Effect.Effect<void> {
    if (this.warnings.length >= this.maxWarnings) return Effect.void
    this.warnings.push(message)
    // stderr, so stdout stays clean for data (encode/decode pipes, JSON output).
    return this.log ? Effect.sync(() => void process.stderr.write(`warning: ${message}\n`)) : Effect.void
  }
}
