/**
 * Engines run generation requests and stream their tokens back. Both run the same round-robin
 * `Scheduler`; they differ in where decode steps happen:
 * - `WorkerEngine` (the server's default): in a Bun Worker with its own model handle, so the HTTP
 *   event loop never waits for a decode step or a prefill.
 * - `InlineEngine`: on the caller's thread, one decode step per event-loop turn (the terminal chat; and
 *   `serve --engine inline`, kept to compare responsiveness in `bench/serve.ts`).
 */
import type { GenerationOptions, SessionInfo } from "../model/generate.ts"
import { openModelSync, type Model, type ModelConfig } from "../model/model.ts"
import { loadNativeSync, type Device } from "../native/library.ts"
import { Scheduler, type Ended, type Round } from "./scheduler.ts"
import type { ToWorker, WorkerInit } from "./worker.ts"

export interface Sink {
  /** One generated token id. */
  token(id: number): void
  /** The request left the engine (finished, failed or cancelled); its native session is freed. */
  end(result: { info?: SessionInfo; error?: string; cancelled?: boolean }): void
}

export interface Handle {
  /** Stops generation; `end` follows once the session is freed. */
  cancel(): void
}

export interface Engine {
  readonly kind: string
  readonly config: ModelConfig
  /** The ids that end a generation by default (config.json's and generation_config.json's eos). */
  readonly stopTokenIds: readonly number[]
  submit(prompt: Uint32Array, options: GenerationOptions, sink: Sink): Handle
  /** Requests submitted and not yet ended. */
  readonly inflight: number
  /** Set when the engine can no longer generate (the worker died). */
  readonly broken: string | undefined
  close(): Promise<void>
}

/** Shared bookkeeping: ids, sinks, dispatching rounds. */
abstract class BaseEngine implements Engine {
  abstract readonly kind: string
  abstract readonly config: ModelConfig
  abstract readonly stopTokenIds: readonly number[]
  protected readonly sinks = new Map<number, Sink>()
  protected readonly cancelled = new Set<number>()
  #next = 1
  broken: string | undefined

  get inflight(): number {
    return this.sinks.size
  }

  protected abstract send(msg: ToWorker): void

  submit(prompt: Uint32Array, options: GenerationOptions, sink: Sink): Handle {
    if (this.broken) {
      queueMicrotask(() => sink.end({ error: this.broken }))
      return { cancel() {} }
    }
    const id = this.#next++
    this.sinks.set(id, sink)
    this.send({ type: "submit", job: { id, prompt, options } })
    return {
      cancel: () => {
        if (!this.sinks.has(id) || this.cancelled.has(id)) return
        this.cancelled.add(id)
        this.send({ type: "cancel", id })
      },
    }
  }

  protected dispatch(r: Round): void {
    for (const [id, t] of r.tokens) if (!this.cancelled.has(id)) this.sinks.get(id)?.token(t)
    for (const e of r.ended) this.#end(e)
  }

  #end(e: Ended): void {
    const sink = this.sinks.get(e.id)
    this.sinks.delete(e.id)
    this.cancelled.delete(e.id)
    sink?.end({ info: e.info, error: e.error, cancelled: e.cancelled })
  }

  protected failAll(message: string): void {
    this.broken = message
    for (const id of [...this.sinks.keys()]) this.#end({ id, error: message })
  }

  abstract close(): Promise<void>
}

export class WorkerEngine extends BaseEngine {
  readonly kind = "worker"
  #closed = false

  private constructor(readonly worker: Worker, readonly config: ModelConfig, readonly stopTokenIds: readonly number[]) {
    super()
    worker.onmessage = (ev: MessageEvent) => {
      const msg = ev.data as { type: string } & Round
      if (msg.type === "round") this.dispatch(msg)
    }
    worker.onerror = (ev) => this.failAll(`generation worker crashed: ${(ev as ErrorEvent).message ?? ev}`)
    worker.addEventListener("close", () => {
      if (!this.#closed) this.failAll("generation worker exited")
    })
  }

  /** Starts the worker and waits until it has loaded the model. */
  static start(init: WorkerInit): Promise<WorkerEngine> {
    const worker = new Worker(new URL("./worker.ts", import.meta.url))
    return new Promise((resolve, reject) => {
      worker.onmessage = (ev: MessageEvent) => {
        const msg = ev.data as { type: string; config?: ModelConfig; stopTokenIds?: number[]; message?: string }
        if (msg.type === "ready") resolve(new WorkerEngine(worker, msg.config!, msg.stopTokenIds!))
        else if (msg.type === "failed") {
          worker.terminate()
          reject(new Error(msg.message))
        }
      }
      worker.onerror = (ev) => {
        worker.terminate()
        reject(new Error(`generation worker failed to start: ${(ev as ErrorEvent).message}`))
      }
      worker.postMessage({ type: "init", ...init })
    })
  }

  protected send(msg: ToWorker): void {
    this.worker.postMessage(msg)
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const done = new Promise<void>((r) => {
      const t = setTimeout(r, 2000)
      this.worker.onmessage = (ev: MessageEvent) => {
        if ((ev.data as { type: string }).type === "closed") {
          clearTimeout(t)
          r()
        }
      }
    })
    this.worker.postMessage({ type: "close" })
    await done
    this.worker.terminate()
    for (const [id] of this.sinks) this.sinks.get(id)?.end({ cancelled: true })
    this.sinks.clear()
  }
}

const turn = () => new Promise<void>((r) => setImmediate(r))

export class InlineEngine extends BaseEngine {
  readonly kind = "inline"
  readonly scheduler: Scheduler
  #running = false

  constructor(readonly model: Model, maxActive = 32, readonly ownsModel = false) {
    super()
    this.scheduler = new Scheduler(model, maxActive)
  }

  static open(init: WorkerInit): InlineEngine {
    return new InlineEngine(openModelSync(init.modelDir, loadNativeSync(init.device), init.device), init.maxActive, true)
  }

  get config(): ModelConfig {
    return this.model.config
  }

  get stopTokenIds(): readonly number[] {
    return this.model.stopTokenIds
  }

  protected send(msg: ToWorker): void {
    if (msg.type === "submit") {
      this.scheduler.submit(msg.job)
      void this.#loop()
    } else if (msg.type === "cancel") this.scheduler.cancel(msg.id)
  }

  async #loop(): Promise<void> {
    if (this.#running) return
    this.#running = true
    try {
      // One decode step per event-loop turn: other work never waits for more than one step.
      while (!this.scheduler.idle) {
        await turn()
        this.dispatch(this.scheduler.step())
      }
    } catch (e) {
      this.failAll((e as Error).message)
    } finally {
      this.#running = false
    }
  }

  async close(): Promise<void> {
    this.scheduler.close()
    for (const [id] of this.sinks) this.sinks.get(id)?.end({ cancelled: true })
    this.sinks.clear()
    if (this.ownsModel) this.model.free()
  }
}
