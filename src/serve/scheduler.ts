/**
 * Fair decoding of many requests on one model: every active request gets one token per round
 * (round-robin; a newly admitted request goes first, so its time to first token is one prefill, not a
 * round); beyond `maxActive` requests wait in a FIFO queue. `round()` and
 * `step()` (one token of one request) are plain synchronous functions so the owner decides where
 * they run (a Worker, or between event-loop turns) and can cancel requests between any two calls;
 * a cancelled request's native session is freed.
 */
import { openSessionSync, type GenerationOptions, type Session, type SessionInfo } from "../model/generate.ts"
import type { Model } from "../model/model.ts"

export interface Job {
  readonly id: number
  readonly prompt: Uint32Array
  readonly options: GenerationOptions
}

/** What one round produced: `tokens` as [id, token] pairs, then the requests that ended. */
export interface Round {
  readonly tokens: Array<[number, number]>
  readonly ended: Array<Ended>
}

/** A request that left the scheduler: finished (`info`), failed (`error`) or cancelled; its session is freed. */
export interface Ended {
  readonly id: number
  readonly info?: SessionInfo
  readonly error?: string
  readonly cancelled?: boolean
}

export class Scheduler {
  readonly #queue: Job[] = []
  readonly #active = new Map<number, Session>()
  /** Active ids in turn order: the next to step is first. */
  #order: number[] = []
  readonly #cancelled = new Set<number>()
  #dropped: Ended[] = []

  constructor(readonly model: Model, readonly maxActive = 32) {}

  get activeCount(): number {
    return this.#active.size
  }

  get queuedCount(): number {
    return this.#queue.length
  }

  /** Nothing to decode and nothing left to report. */
  get idle(): boolean {
    return this.#active.size === 0 && this.#queue.length === 0 && this.#dropped.length === 0
  }

  submit(job: Job): void {
    this.#queue.push(job)
  }

  /** Drops a request: queued ones never start, active ones are freed before the next round. */
  cancel(id: number): void {
    const q = this.#queue.findIndex((j) => j.id === id)
    if (q >= 0) {
      this.#queue.splice(q, 1)
      this.#dropped.push({ id, cancelled: true })
    } else if (this.#active.has(id)) this.#cancelled.add(id)
  }

  /** One token for every active request (the first call of a new request runs its prefill). */
  round(): Round {
    const out = this.#begin()
    for (let n = this.#order.length; n > 0; n--) this.#stepNext(out)
    return out
  }

  /**
   * One token for the next active request in turn: the finest unit of work, for owners that must
   * yield to their event loop after every decode step.
   */
  step(): Round {
    const out = this.#begin()
    this.#stepNext(out)
    return out
  }

  /** Reports what left since the last call, frees cancelled sessions, admits queued requests. */
  #begin(): { tokens: Array<[number, number]>; ended: Ended[] } {
    const ended: Ended[] = this.#dropped
    this.#dropped = []
    for (const id of this.#cancelled) {
      this.#drop(id)
      ended.push({ id, cancelled: true })
    }
    this.#cancelled.clear()
    const fresh: number[] = []
    while (this.#active.size < this.maxActive && this.#queue.length > 0) {
      const job = this.#queue.shift()!
      try {
        this.#active.set(job.id, openSessionSync(this.model, job.prompt, job.options))
        fresh.push(job.id)
      } catch (e) {
        ended.push({ id: job.id, error: (e as Error).message })
      }
    }
    // Newcomers go first (their prefill and first token), then take their turn with the others.
    if (fresh.length > 0) this.#order = [...fresh, ...this.#order]
    return { tokens: [], ended }
  }

  #stepNext(out: { tokens: Array<[number, number]>; ended: Ended[] }): void {
    const id = this.#order.shift()
    if (id === undefined) return
    const s = this.#active.get(id)!
    try {
      const t = s.next()
      if (t !== undefined) out.tokens.push([id, t])
      if (s.finished || t === undefined) {
        out.ended.push({ id, info: s.info() })
        this.#drop(id)
      } else this.#order.push(id)
    } catch (e) {
      out.ended.push({ id, error: (e as Error).message })
      this.#drop(id)
    }
  }

  /** Frees every session (shutdown). */
  close(): void {
    for (const id of [...this.#active.keys()]) this.#drop(id)
    this.#order = []
    this.#queue.length = 0
    this.#cancelled.clear()
    this.#dropped = []
  }

  #drop(id: number): void {
    const s = this.#active.get(id)
    if (!s) return
    this.#active.delete(id)
    const k = this.#order.indexOf(id)
    if (k >= 0) this.#order.splice(k, 1)
    s.free()
  }
}
