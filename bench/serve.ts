/**
 * Serve suite (issue 5): `bunmind serve` over loopback with 1, 8 and 32 concurrent streaming clients.
 *   - throughput: completion tokens per second summed over all streams (first request sent → last
 *     stream done), every request generating a fixed count (`ignore_eos`);
 *   - time to first token: request sent → first content chunk, median over the clients;
 *   - /health latency (p99) polled every 20 ms during the load: how free the event loop stays.
 * Both engines are measured side by side in one run: `worker` (decode steps in a Bun Worker, the
 * default) against `inline` (one decode step per event-loop turn on the server's main thread) as the
 * baseline. Each server is its own `bunmind serve` process, as users run it; the clients live here.
 * Random-weight models (a tiny one; plus minimind2-small in the full run) — speed does not depend on
 * the weights' values.
 *   bun bench/serve.ts [--quick]
 */
import { mkdtempSync, readFileSync } from "node:fs"
import { copyFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { repoRoot, stats, writeReport, type Row } from "./lib/report.ts"

const bun = process.execPath
const tokenizerDir = resolve(repoRoot, "..", "shared", "data", "minimind")

interface Plan {
  presets: Array<{ preset: string; maxTokens: number }>
  clients: number[]
  repeats: number
}

const PLANS: Record<"quick" | "full", Plan> = {
  quick: { presets: [{ preset: "tiny", maxTokens: 32 }], clients: [1, 8, 32], repeats: 1 },
  full: {
    presets: [
      { preset: "tiny", maxTokens: 128 },
      { preset: "minimind2-small", maxTokens: 24 },
    ],
    clients: [1, 8, 32],
    repeats: 3,
  },
}

function initModel(preset: string): string {
  const dir = join(mkdtempSync(join(tmpdir(), "bunmind-bench-serve-")), preset)
  const p = Bun.spawnSync([bun, join(repoRoot, "src/cli.ts"), "model", "init", "--preset", preset, "--out", dir, "--vocab-size", "6400"], { cwd: repoRoot })
  if (p.exitCode !== 0) throw new Error(`model init ${preset}: ${p.stderr.toString()}`)
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(tokenizerDir, f), join(dir, f))
  return dir
}

async function startServer(model: string, engine: string) {
  const proc = Bun.spawn([bun, join(repoRoot, "src/cli.ts"), "serve", "--model", model, "--model-name", "bench", "--port", "0", "--engine", engine], {
    cwd: repoRoot,
    stdout: "pipe",
    stderr: "inherit",
  })
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader()
  let out = ""
  while (!/bunmind serve: (http:\/\/\S+)/.test(out)) {
    const { value, done } = await reader.read()
    if (done) throw new Error(`server exited: ${out}`)
    out += new TextDecoder().decode(value)
  }
  void (async () => {
    for (;;) if ((await reader.read()).done) break
  })()
  return {
    url: /bunmind serve: (http:\/\/\S+)/.exec(out)![1]!,
    async stop() {
      proc.kill("SIGINT")
      await proc.exited
    },
  }
}

/** One streaming request; returns its completion tokens and time to first content (ms). */
async function streamOnce(url: string, i: number, maxTokens: number): Promise<{ tokens: number; ttft: number }> {
  const t0 = performance.now()
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    body: JSON.stringify({
      model: "bench",
      messages: [{ role: "user", content: `Tell me something about number ${i}.` }],
      max_tokens: maxTokens,
      ignore_eos: true,
      temperature: 0.8,
      seed: i,
      stream: true,
      stream_options: { include_usage: true },
    }),
  })
  if (!res.ok) throw new Error(`${res.status} ${await res.text()}`)
  const reader = res.body!.getReader()
  const dec = new TextDecoder()
  let buf = ""
  let ttft = NaN
  let tokens = 0
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    buf += dec.decode(value, { stream: true })
    let k: number
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, k)
      buf = buf.slice(k + 2)
      if (!ev.startsWith("data: {")) continue
      const j = JSON.parse(ev.slice(6))
      if (j.usage) tokens = j.usage.completion_tokens
      const d = j.choices[0]?.delta
      if (Number.isNaN(ttft) && d && d.role === undefined) ttft = performance.now() - t0
    }
  }
  return { tokens, ttft }
}

async function loadRun(url: string, clients: number, maxTokens: number) {
  const health: number[] = []
  let running = true
  const poller = (async () => {
    while (running) {
      const t0 = performance.now()
      await (await fetch(`${url}/health`)).json()
      health.push(performance.now() - t0)
      await Bun.sleep(20)
    }
  })()
  const t0 = performance.now()
  const rs = await Promise.all(Array.from({ length: clients }, (_, i) => streamOnce(url, i, maxTokens)))
  const secs = (performance.now() - t0) / 1000
  running = false
  await poller
  const total = rs.reduce((a, r) => a + r.tokens, 0)
  if (total !== clients * maxTokens) throw new Error(`expected ${clients * maxTokens} tokens, got ${total}`)
  return { tps: total / secs, ttfts: rs.map((r) => r.ttft), health }
}

const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(0.99 * xs.length))] ?? NaN

export async function serveSuite(quick = false): Promise<Row[]> {
  const plan = PLANS[quick ? "quick" : "full"]
  const rows: Row[] = []
  for (const { preset, maxTokens } of plan.presets) {
    const model = initModel(preset)
    // Per engine, per client count: throughput samples, all TTFTs, all /health latencies.
    const results: Record<string, Record<number, { tps: number[]; ttft: number[]; health: number[] }>> = {}
    // Alternate the engines per repeat so that load from elsewhere on the machine hits both alike.
    for (let rep = 0; rep < plan.repeats; rep++) {
      for (const engine of rep % 2 === 0 ? ["inline", "worker"] : ["worker", "inline"]) {
        const server = await startServer(model, engine)
        try {
          await loadRun(server.url, 4, Math.min(maxTokens, 8)) // warm-up
          for (const c of plan.clients) {
            const r = await loadRun(server.url, c, maxTokens)
            const slot = ((results[engine] ??= {})[c] ??= { tps: [], ttft: [], health: [] })
            slot.tps.push(r.tps)
            slot.ttft.push(...r.ttfts)
            slot.health.push(...r.health)
            console.error(`[serve] ${preset} ${engine} c=${c}: ${r.tps.toFixed(1)} tokens/s, TTFT median ${stats(r.ttfts).median.toFixed(1)} ms, /health p99 ${p99(r.health).toFixed(1)} ms`)
          }
        } finally {
          await server.stop()
        }
      }
    }
    for (const c of plan.clients) {
      const w = results.worker![c]!
      const i = results.inline![c]!
      const wt = stats(w.tps)
      const it = stats(i.tps)
      const wf = stats(w.ttft)
      const iff = stats(i.ttft)
      const note = `${preset}, ${maxTokens} tokens per stream`
      rows.push(
        { suite: "serve", name: `throughput, ${c} streams`, backend: `worker (${preset})`, unit: "tokens/s", value: wt.median, spread: wt.spread, baseline: "inline", ratio: wt.median / it.median, note },
        { suite: "serve", name: `throughput, ${c} streams`, backend: `inline (${preset})`, unit: "tokens/s", value: it.median, spread: it.spread, note },
        { suite: "serve", name: `time to first token, ${c} streams`, backend: `worker (${preset})`, unit: "ms", value: wf.median, spread: wf.spread, baseline: "inline", ratio: iff.median / wf.median, note },
        { suite: "serve", name: `time to first token, ${c} streams`, backend: `inline (${preset})`, unit: "ms", value: iff.median, spread: iff.spread, note },
        { suite: "serve", name: `/health p99 under ${c} streams`, backend: `worker (${preset})`, unit: "ms", value: p99(w.health), baseline: "inline", ratio: p99(i.health) / p99(w.health), note: `max ${Math.max(...w.health).toFixed(1)} ms over ${w.health.length} polls` },
        { suite: "serve", name: `/health p99 under ${c} streams`, backend: `inline (${preset})`, unit: "ms", value: p99(i.health), note: `max ${Math.max(...i.health).toFixed(1)} ms over ${i.health.length} polls` },
      )
    }
  }
  return rows
}

if (import.meta.main) {
  const quick = process.argv.includes("--quick")
  const rows = await serveSuite(quick)
  const { json, md } = writeReport(quick ? "serve-quick" : "serve", rows, { quick })
  console.log(readFileSync(md, "utf8"))
  console.error(`wrote ${json} and ${md}`)
}
