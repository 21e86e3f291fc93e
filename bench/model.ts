/**
 * Model suite (issue 3): minimind2-small on the CPU, bunmind (candle over bun:ffi) against the same
 * model in PyTorch eager (bench/py/model_bench.py), measured in the same run:
 *   - training tokens/s: one optimizer step = forward + masked CE + backward + clip 1.0 + AdamW, f32;
 *   - prefill tokens/s: a no-grad forward of [b, seq] returning last-position logits;
 *   - decode tokens/s: batch 1, KV cache, greedy, after a short prompt (prefill timed apart);
 *   - peak RSS of each side's worker process.
 * Each side runs in its own worker process (same thread count: RAYON_NUM_THREADS for candle,
 * torch.set_num_threads + OMP_NUM_THREADS for PyTorch), driven over stdin/stdout one JSON line per
 * request. Samples are interleaved (bunmind, torch, torch, bunmind, ...) so that load from other
 * processes on a shared machine hits both sides alike; every figure is a median over samples with
 * its spread (max − min) / median. Peak RSS is each worker's VmHWM / ru_maxrss over the whole run.
 *   bun bench/model.ts [--quick]          (BUNMIND_BENCH_THREADS overrides the thread count)
 */
import { readFileSync } from "node:fs"
import { cpus, loadavg } from "node:os"
import { join } from "node:path"
import { benchRoot, repoRoot, stats, writeReport, type Row } from "./lib/report.ts"

const PRESET = "minimind2-small"

interface Plan {
  train: { b: number; t: number; warmup: number; samples: number }
  forward: { b: number; t: number; warmup: number; samples: number }
  decode: { prompt: number; new: number; warmup: number; samples: number }
}

export const PLANS: Record<"full" | "quick", Plan> = {
  full: {
    train: { b: 4, t: 512, warmup: 1, samples: 3 },
    forward: { b: 4, t: 512, warmup: 1, samples: 5 },
    decode: { prompt: 32, new: 128, warmup: 1, samples: 5 },
  },
  quick: {
    train: { b: 2, t: 128, warmup: 1, samples: 2 },
    forward: { b: 2, t: 128, warmup: 1, samples: 3 },
    decode: { prompt: 16, new: 32, warmup: 1, samples: 3 },
  },
}

// ---------------------------------------------------------------------------------------------
// The bunmind worker (runs in its own process: `bun bench/model.ts --worker`).

type Msg = Record<string, unknown> & { op: string }

function procStatusMiB(key: "VmHWM" | "VmRSS"): number {
  const m = readFileSync("/proc/self/status", "utf8").match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"))
  return m ? Number(m[1]) / 1024 : NaN
}

/** Deterministic pseudo-random token ids in [3, vocab). */
function randomIds(n: number, vocab: number, seed: number): Uint32Array {
  const out = new Uint32Array(n)
  let s = seed >>> 0 || 1
  for (let i = 0; i < n; i++) {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    out[i] = 3 + ((s >>> 0) % (vocab - 3))
  }
  return out
}

async function runWorker(): Promise<void> {
  const { initModelSync } = await import("../src/model/model.ts")
  const { openTrainerSync } = await import("../src/model/trainer.ts")
  const { openSessionSync } = await import("../src/model/generate.ts")
  type M = ReturnType<typeof initModelSync>
  let model: M | undefined
  let trainer: ReturnType<typeof openTrainerSync> | undefined
  let vocab = 0
  let seed = 1
  const batch = (b: number, t: number) => {
    const ids = randomIds(b * t, vocab, seed++)
    const targets = new Uint32Array(b * t)
    const mask = new Float32Array(b * t)
    for (let r = 0; r < b; r++)
      for (let i = 0; i < t; i++) {
        targets[r * t + i] = ids[r * t + ((i + 1) % t)]!
        mask[r * t + i] = i + 1 < t ? 1 : 0
      }
    return { ids, targets, mask }
  }
  const ops: Record<string, (m: Msg) => unknown> = {
    init: (m) => {
      const t0 = performance.now()
      model = initModelSync({ preset: m.preset as string }, 42)
      vocab = model.vocabSize
      // Same optimizer settings as the PyTorch side: AdamW(0.9, 0.999, 1e-8, wd 0.01), clip 1.0.
      trainer = openTrainerSync(model, { weightDecay: 0.01, gradClip: 1.0 })
      return { params: model.info().num_parameters, config: model.config, init_s: (performance.now() - t0) / 1000, rss_mib: procStatusMiB("VmRSS"), rayon_threads: process.env.RAYON_NUM_THREADS ?? null }
    },
    train: (m) => {
      const { b, t } = m as unknown as { b: number; t: number }
      const bt = batch(b, t)
      const t0 = performance.now()
      const r = trainer!.step([bt], b, 1e-4)
      return { s: (performance.now() - t0) / 1000, loss: r.loss, grad_norm: r.grad_norm }
    },
    forward: (m) => {
      const { b, t } = m as unknown as { b: number; t: number }
      const { ids } = batch(b, t)
      const t0 = performance.now()
      const logits = model!.forward(ids, b, false)
      const s = (performance.now() - t0) / 1000
      return { s, checksum: logits[0]! }
    },
    decode: (m) => {
      const { prompt, new: n } = m as unknown as { prompt: number; new: number }
      const { ids } = batch(1, prompt)
      const session = openSessionSync(model!, ids, { temperature: 0, maxNewTokens: n, stopTokenIds: [] })
      try {
        // The session prefills the prompt on its first `next`.
        const t0 = performance.now()
        const out = [session.next()]
        const t1 = performance.now()
        for (let i = 1; i < n; i++) out.push(session.next())
        const t2 = performance.now()
        if (out.some((x) => x === undefined)) throw new Error(`session ended early: ${JSON.stringify(session.info())}`)
        return { prefill_s: (t1 - t0) / 1000, decode_s: (t2 - t1) / 1000, decoded: n - 1, tokens: out.slice(0, 8) }
      } finally {
        session.free()
      }
    },
    rss: () => ({ peak_rss_mib: procStatusMiB("VmHWM"), rss_mib: procStatusMiB("VmRSS") }),
  }
  for await (const line of console) {
    if (!line.trim()) continue
    const m = JSON.parse(line) as Msg
    if (m.op === "quit") break
    let reply: unknown
    try {
      const f = ops[m.op]
      if (!f) throw new Error(`unknown op ${m.op}`)
      reply = f(m)
    } catch (e) {
      reply = { error: e instanceof Error ? e.message : String(e) }
    }
    process.stdout.write(JSON.stringify(reply) + "\n")
  }
  trainer?.free()
  model?.free()
  process.exit(0)
}

// ---------------------------------------------------------------------------------------------
// The driver.

/** A worker process spoken to one JSON line at a time. */
class Worker {
  #proc: ReturnType<typeof Bun.spawn>
  #reader: ReadableStreamDefaultReader<Uint8Array>
  #buf = ""
  #dec = new TextDecoder()
  #stderr: Promise<string>

  constructor(readonly name: string, cmd: string[], env: Record<string, string>) {
    this.#proc = Bun.spawn(cmd, { cwd: repoRoot, stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } })
    this.#reader = (this.#proc.stdout as ReadableStream<Uint8Array>).getReader()
    this.#stderr = new Response(this.#proc.stderr as ReadableStream<Uint8Array>).text()
  }

  async request<T = Record<string, unknown>>(msg: Msg): Promise<T> {
    const stdin = this.#proc.stdin as import("bun").FileSink
    stdin.write(JSON.stringify(msg) + "\n")
    stdin.flush()
    for (;;) {
      const nl = this.#buf.indexOf("\n")
      if (nl >= 0) {
        const line = this.#buf.slice(0, nl)
        this.#buf = this.#buf.slice(nl + 1)
        if (!line.trim().startsWith("{")) continue // stray output
        const r = JSON.parse(line) as T & { error?: string }
        if (r.error) throw new Error(`${this.name} ${msg.op}: ${r.error}`)
        return r
      }
      const { value, done } = await this.#reader.read()
      if (done) {
        const err = (await this.#stderr).trim().split("\n").slice(-3).join(" | ")
        throw new Error(`${this.name} worker exited (${msg.op}): ${err}`)
      }
      this.#buf += this.#dec.decode(value, { stream: true })
    }
  }

  async close(): Promise<void> {
    try {
      const stdin = this.#proc.stdin as import("bun").FileSink
      stdin.write(JSON.stringify({ op: "quit" }) + "\n")
      stdin.end()
    } catch {
      // already gone
    }
    const timer = setTimeout(() => this.#proc.kill(), 5000)
    await this.#proc.exited
    clearTimeout(timer)
  }
}

/** Linux CPU pressure: the share of the last minute in which some task waited for a CPU. */
function cpuPressure(): number | undefined {
  try {
    const m = readFileSync("/proc/pressure/cpu", "utf8").match(/^some .*avg60=([\d.]+)/m)
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

interface Side {
  name: string
  worker: Worker
  train: number[]
  forward: number[]
  decode: number[]
  ttft: number[]
  peakRss: number
  idleRss: number
  info: Record<string, unknown>
}

export async function modelSuite(quick = false): Promise<Row[]> {
  const plan = PLANS[quick ? "quick" : "full"]
  const threads = Number(process.env.BUNMIND_BENCH_THREADS ?? cpus().length)
  const threadEnv = { RAYON_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) }
  const load0 = loadavg()[0]!
  const psi0 = cpuPressure()
  const bun = process.execPath
  const sides: Side[] = []
  const mk = (name: string, w: Worker): Side => ({ name, worker: w, train: [], forward: [], decode: [], ttft: [], peakRss: NaN, idleRss: NaN, info: {} })

  const bm = mk("bunmind (candle CPU, bun:ffi)", new Worker("bunmind", [bun, join(benchRoot, "model.ts"), "--worker"], threadEnv))
  bm.idleRss = (await bm.worker.request<{ rss_mib: number }>({ op: "rss" })).rss_mib
  bm.info = await bm.worker.request({ op: "init", preset: PRESET })
  sides.push(bm)
  // The PyTorch side gets the exact config bunmind built from the preset.
  const cfg = bm.info.config as Record<string, unknown>
  let torchSide: Side | undefined
  try {
    // OpenMP's default spin-then-sleep wait collapses on a loaded 2-core machine (a 256-token
    // forward went from ~0.5 s to 2.5–5 s); PASSIVE is the setting that is fair to PyTorch here.
    const pyEnv = { ...threadEnv, OMP_WAIT_POLICY: process.env.BUNMIND_BENCH_OMP_WAIT_POLICY ?? "PASSIVE" }
    const py = mk("PyTorch eager (CPU)", new Worker("pytorch", ["python3", join(benchRoot, "py", "model_bench.py")], pyEnv))
    py.idleRss = (await py.worker.request<{ rss_mib: number }>({ op: "rss" })).rss_mib
    py.info = await py.worker.request({ op: "init", config: cfg, threads, seed: 42 })
    py.name = `PyTorch ${py.info.torch} eager (CPU)`
    sides.push(py)
    torchSide = py
  } catch (e) {
    console.error(`[bench] PyTorch baseline unavailable: ${e instanceof Error ? e.message : e}`)
  }

  // Interleave: sample i runs the sides in the order [0, 1] when i is even, [1, 0] when odd.
  const round = async (i: number, f: (s: Side) => Promise<void>) => {
    const order = i % 2 === 0 ? sides : [...sides].reverse()
    for (const s of order) await f(s)
  }
  const log = (what: string, s: Side, v: string) => console.error(`[bench] model ${what} ${s.worker.name}: ${v}`)

  const { train, forward, decode } = plan
  for (let i = 0; i < train.warmup + train.samples; i++)
    await round(i, async (s) => {
      const r = await s.worker.request<{ s: number; loss: number }>({ op: "train", b: train.b, t: train.t })
      if (!Number.isFinite(r.loss)) throw new Error(`${s.worker.name}: non-finite training loss`)
      if (i >= train.warmup) s.train.push((train.b * train.t) / r.s)
      log("train", s, `${r.s.toFixed(2)} s/step loss ${r.loss.toFixed(3)}${i < train.warmup ? " (warm-up)" : ""}`)
    })
  for (let i = 0; i < forward.warmup + forward.samples; i++)
    await round(i, async (s) => {
      const r = await s.worker.request<{ s: number }>({ op: "forward", b: forward.b, t: forward.t })
      if (i >= forward.warmup) s.forward.push((forward.b * forward.t) / r.s)
      log("forward", s, `${r.s.toFixed(3)} s${i < forward.warmup ? " (warm-up)" : ""}`)
    })
  for (let i = 0; i < decode.warmup + decode.samples; i++)
    await round(i, async (s) => {
      const r = await s.worker.request<{ prefill_s: number; decode_s: number; decoded: number }>({ op: "decode", prompt: decode.prompt, new: decode.new })
      if (i >= decode.warmup) {
        s.decode.push(r.decoded / r.decode_s)
        s.ttft.push(r.prefill_s * 1000)
      }
      log("decode", s, `${(r.decoded / r.decode_s).toFixed(1)} tok/s, first token ${(r.prefill_s * 1000).toFixed(1)} ms${i < decode.warmup ? " (warm-up)" : ""}`)
    })
  for (const s of sides) {
    s.peakRss = (await s.worker.request<{ peak_rss_mib: number }>({ op: "rss" })).peak_rss_mib
    await s.worker.close()
  }
  const load1 = loadavg()[0]!
  const psi1 = cpuPressure()

  const note = `${threads} threads each side; load avg ${load0.toFixed(2)} → ${load1.toFixed(2)}` + (psi0 !== undefined && psi1 !== undefined ? `, CPU pressure (some, avg60) ${psi0}% → ${psi1}%` : "") + (torchSide ? `; torch ${torchSide.info.torch} (${torchSide.info.attention}, AdamW for-loop, OMP_WAIT_POLICY=${process.env.BUNMIND_BENCH_OMP_WAIT_POLICY ?? "PASSIVE"})` : "; PyTorch baseline unavailable")
  const metrics: { key: "train" | "forward" | "decode" | "ttft"; name: string; unit: string; higherBetter: boolean }[] = [
    { key: "train", name: `${PRESET} train step (fwd + masked CE + bwd + clip + AdamW, f32), b=${train.b} × seq ${train.t}`, unit: "tokens/s", higherBetter: true },
    { key: "forward", name: `${PRESET} prefill forward (no grad, last-position logits), b=${forward.b} × seq ${forward.t}`, unit: "tokens/s", higherBetter: true },
    { key: "decode", name: `${PRESET} decode, batch 1, KV cache, greedy, prompt ${decode.prompt} + ${decode.new} new`, unit: "tokens/s", higherBetter: true },
    { key: "ttft", name: `${PRESET} time to first token (prefill ${decode.prompt} tokens + 1), batch 1`, unit: "ms", higherBetter: false },
  ]
  const rows: Row[] = []
  for (const m of metrics) {
    const sb = stats(bm[m.key])
    const row: Row = { suite: "model", name: m.name, backend: bm.name, unit: m.unit, value: sb.median, spread: sb.spread, note }
    rows.push(row)
    if (torchSide) {
      const st = stats(torchSide[m.key])
      row.baseline = torchSide.name
      row.ratio = m.higherBetter ? sb.median / st.median : st.median / sb.median
      rows.push({ suite: "model", name: m.name, backend: torchSide.name, unit: m.unit, value: st.median, spread: st.spread, note })
    }
  }
  const rssName = `peak RSS of the worker process (init + train b=${train.b}×${train.t} + prefill + decode)`
  const rssRow: Row = { suite: "model", name: rssName, backend: bm.name, unit: "MiB", value: bm.peakRss, note: `idle runtime ${bm.idleRss.toFixed(0)} MiB before loading the model` }
  rows.push(rssRow)
  if (torchSide) {
    rssRow.baseline = torchSide.name
    rssRow.ratio = torchSide.peakRss / bm.peakRss // > 1: bunmind uses less
    rows.push({ suite: "model", name: rssName, backend: torchSide.name, unit: "MiB", value: torchSide.peakRss, note: `idle interpreter + torch import ${torchSide.idleRss.toFixed(0)} MiB` })
  }
  return rows
}

if (import.meta.main) {
  if (process.argv.includes("--worker")) {
    await runWorker()
  } else {
    const quick = process.argv.includes("--quick")
    const rows = await modelSuite(quick)
    const { json, md } = writeReport(quick ? "model-quick" : "model", rows, { quick, plan: PLANS[quick ? "quick" : "full"] })
    console.log(readFileSync(md, "utf8"))
    console.error(`wrote ${json} and ${md}`)
  }
}
