/**
 * Progress reporting for long commands: a redrawn bar on a TTY, plain periodic log lines
 * otherwise (CI logs, pipes). Output goes to stderr so stdout stays clean for data.
 */
import { plainProgress } from "../util/env.ts"

export interface ProgressOptions {
  label: string
  total?: number
  /** Formats the current value (e.g. bytes → MB). */
  format?: (n: number) => string
  /** Minimum seconds between plain log lines when not on a TTY. */
  logEvery?: number
  stream?: NodeJS.WriteStream
  /** Write nothing (library use, tests). */
  quiet?: boolean
}

const sink = { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream

export class ProgressBar {
  readonly #opts: Required<Omit<ProgressOptions, "total" | "quiet">> & { total?: number }
  readonly #start = performance.now()
  #lastLog = 0
  #lastLen = 0
  #done = false
  readonly tty: boolean

  constructor(opts: ProgressOptions) {
    const stream = opts.quiet ? sink : (opts.stream ?? process.stderr)
    this.#opts = { format: (n) => String(n), logEvery: 5, ...opts, stream }
    this.tty = Boolean(stream.isTTY) && !plainProgress()
  }

  get elapsed(): number {
    return (performance.now() - this.#start) / 1000
  }

  /** Update with the current value and extra fields (`loss=2.31` etc.). */
  update(value: number, fields: Record<string, string | number> = {}, total = this.#opts.total): void {
    if (this.#done) return
    const { label, format } = this.#opts
    const frac = total ? Math.min(1, value / total) : undefined
    const eta = frac && frac > 0 ? (this.elapsed * (1 - frac)) / frac : undefined
    const extra = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === "number" ? fmtNum(v) : v}`).join(" ")
    const count = total ? `${format(value)}/${format(total)}` : format(value)
    const timing = `${fmtTime(this.elapsed)}${eta !== undefined ? ` eta ${fmtTime(eta)}` : ""}`
    if (this.tty) {
      const width = 24
      const bar = frac !== undefined
        ? "█".repeat(Math.round(frac * width)).padEnd(width, "░")
        : "░".repeat(width).split("").map((c, i) => (i === Math.floor(this.elapsed * 8) % width ? "█" : c)).join("")
      const pct = frac !== undefined ? `${(frac * 100).toFixed(0).padStart(3)}%` : " ..."
      const line = `${label} ${bar} ${pct} ${count} ${extra} [${timing}]`
      this.#opts.stream.write(`\r${line}${" ".repeat(Math.max(0, this.#lastLen - line.length))}`)
      this.#lastLen = line.length
    } else if (this.elapsed - this.#lastLog >= this.#opts.logEvery) {
      this.#lastLog = this.elapsed
      const pct = frac !== undefined ? ` ${(frac * 100).toFixed(1)}%` : ""
      this.#opts.stream.write(`${label}:${pct} ${count} ${extra} [${timing}]\n`)
    }
  }

  /** Final line (always printed). */
  finish(message: string): void {
    if (this.#done) return
    this.#done = true
    if (this.tty) this.#opts.stream.write(`\r${" ".repeat(this.#lastLen)}\r`)
    this.#opts.stream.write(`${this.#opts.label}: ${message} [${fmtTime(this.elapsed)}]\n`)
  }
}

export const fmtTime = (s: number): string => {
  if (!Number.isFinite(s)) return "?"
  if (s < 60) return `${s.toFixed(1)}s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, "0")}s`
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`
}

export const fmtNum = (v: number): string =>
  Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(3) : v.toPrecision(3)

export const fmtBytes = (n: number): string =>
  n < 1024 ? `${n}B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)}KB` : `${(n / (1 << 20)).toFixed(1)}MB`
