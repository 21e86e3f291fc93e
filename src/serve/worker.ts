/**
 * The generation Worker: owns its own native model handle and the round-robin `Scheduler`, so decode
 * steps never run on the server's event loop. Between decode steps it yields to its own event loop,
 * which is when submissions and cancellations arrive.
 *
 * Protocol (main → worker): `{ type: "submit", job }`, `{ type: "cancel", id }`, `{ type: "close" }`.
 * (worker → main): `{ type: "ready", config, stopTokenIds }` | `{ type: "failed", message }` once after loading,
 * `{ type: "round", tokens, ended }` per step that produced something, `{ type: "closed" }`.
 */
import { readlinkSync } from "node:fs"
import { setPriority } from "node:os"
import { openModelSync, type Model } from "../model/model.ts"
import { loadNativeSync, type Device } from "../native/library.ts"
import { Scheduler, type Job } from "./scheduler.ts"

export interface WorkerInit {
  readonly modelDir: string
  readonly device: Device
  readonly maxActive: number
  /**
   * Nice value for this thread (Linux; default 10). Decoding is lowered below the HTTP thread so that
   * on a busy CPU the event loop is scheduled first; compute threads the library starts from here
   * (its rayon pool) inherit it. Requests still get every spare cycle.
   */
  readonly nice?: number
}

/** Lowers this thread's scheduling priority; a no-op where threads cannot be addressed. */
function lowerPriority(nice: number): void {
  try {
    const tid = Number(readlinkSync("/proc/thread-self").split("/").pop())
    if (Number.isInteger(tid) && nice !== 0) setPriority(tid, nice)
  } catch {
    // Not Linux, or not permitted: run at normal priority.
  }
}

export type ToWorker = { type: "submit"; job: Job } | { type: "cancel"; id: number } | { type: "close" }

declare const self: Worker

let model: Model | undefined
let scheduler: Scheduler | undefined
let running = false

const turn = () => new Promise<void>((r) => setImmediate(r))

async function loop(): Promise<void> {
  const s = scheduler
  if (running || !s) return
  running = true
  try {
    // One decode step, then a turn of this thread's event loop: new requests join and cancellations
    // land between any two steps.
    while (scheduler === s && !s.idle) {
      const r = s.step()
      if (r.tokens.length > 0 || r.ended.length > 0) self.postMessage({ type: "round", ...r })
      await turn()
    }
  } finally {
    running = false
  }
}

self.onmessage = (ev: MessageEvent) => {
  const msg = ev.data as ({ type: "init" } & WorkerInit) | ToWorker
  switch (msg.type) {
    case "init":
      lowerPriority(msg.nice ?? 10)
      try {
        model = openModelSync(msg.modelDir, loadNativeSync(msg.device), msg.device)
        scheduler = new Scheduler(model, msg.maxActive)
        self.postMessage({ type: "ready", config: model.config, stopTokenIds: model.stopTokenIds })
      } catch (e) {
        self.postMessage({ type: "failed", message: (e as Error).message })
      }
      return
    case "submit":
      scheduler?.submit(msg.job)
      void loop()
      return
    case "cancel":
      scheduler?.cancel(msg.id)
      return
    case "close":
      scheduler?.close()
      model?.free()
      scheduler = undefined
      model = undefined
      self.postMessage({ type: "closed" })
      return
  }
}
