/**
 * Edge suite: greedy decode tokens/s of the wasm core in Chromium (SIMD128 and without) and under Bun, against the
 * native CPU build on one thread — same random checkpoint (f32), same prompt, same number of tokens — plus model
 * load times (native from disk; Chromium from the network and from the Cache API) and the wasm/page sizes.
 *   bun bench/edge.ts [--quick]      (standalone; writes bench/reports/edge.{json,md})
 * Quick mode uses the "tiny" preset; the full run minimind2-small (26M parameters).
 */
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { exportEdge } from "../src/edge/export.ts"
import { EdgeChat } from "../src/edge/runtime.ts"
import { launchChromium, serveStatic } from "../tests/helpers/browser.ts"
import { edgeTools, ensureWasm, outDir, randomModel } from "../tests/helpers/edge.ts"
import { stats, writeReport, type Row } from "./lib/report.ts"

const PROMPT = "<|im_start|>user\n你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n"

export async function edgeSuite(quick: boolean): Promise<Row[]> {
  ensureWasm()
  const preset = quick ? "tiny" : "minimind2-small"
  const tokens = quick ? 64 : 128
  const reps = quick ? 3 : 5
  const model = randomModel(preset)
  const site = join(outDir, `bench-site-${preset}`)
  const exp = await exportEdge({ model, out: site, quantize: "none", name: `bench ${preset}` })
  const label = `${preset} f32, ${tokens} new tokens`
  const rows: Row[] = []
  const row = (r: Omit<Row, "suite">) => rows.push({ suite: "edge", ...r })

  // Prompt ids from the exported model's own tokenizer (equal to native's: tests/edge-wasm.test.ts).
  const bunChat = await EdgeChat.fromSite(pathToFileURL(site + "/"), { cache: false })
  const ids = [...bunChat.encode(PROMPT)]

  // Native, one thread.
  const native = JSON.parse(
    edgeTools(["decode-bench", model, String(tokens), String(reps), ...ids.map(String)], { RAYON_NUM_THREADS: "1", CANDLE_NUM_THREADS: "1" }).trim().split("\n").pop()!,
  ) as { load_ms: number; prefill_ms: number[]; decode_tok_s: number[] }
  const base = stats(native.decode_tok_s)
  row({ name: `decode (${label})`, backend: "native-cpu-1t", unit: "tok/s", value: base.median, spread: base.spread })

  // wasm under Bun (JavaScriptCore), SIMD build.
  const bunRates: number[] = []
  for (let r = 0; r < reps; r++) {
    bunChat.reset()
    bunChat.model.begin(Uint32Array.from(ids), JSON.stringify({ temperature: 0, max_new_tokens: tokens + 1, stop_token_ids: [] }))
    bunChat.model.step()
    const t = performance.now()
    let n = 0
    while (bunChat.model.step()) n++
    bunRates.push(n / ((performance.now() - t) / 1000))
  }
  bunChat.free()
  const bunStats = stats(bunRates)
  row({ name: `decode (${label})`, backend: "wasm-simd-bun", unit: "tok/s", value: bunStats.median, spread: bunStats.spread, baseline: "native-cpu-1t", ratio: bunStats.median / base.median })

  // Chromium: the exported page's worker, SIMD and no-SIMD.
  const server = serveStatic(site)
  const browser = await launchChromium()
  try {
    const page = await browser.context.newPage()
    const open = async (query: string) => {
      await page.goto(server.url + query)
      await page.waitForFunction(() => ["ready", "failed"].includes((window as any).bunmind?.state.phase), null, { timeout: 300_000 })
      const s = await page.evaluate(() => JSON.parse(JSON.stringify((window as any).bunmind.state)))
      if (s.phase !== "ready") throw new Error(`the page failed to load the model: ${s.error}`)
      return s as { loadMs: number; simd: boolean; sources: Record<string, string> }
    }
    for (const simd of [true, false]) {
      const s = await open(`?simd=${simd ? 1 : 0}&cache=0`)
      if (s.simd !== simd) throw new Error(`asked for simd=${simd}, the page loaded simd=${s.simd}`)
      const b = (await page.evaluate((o) => (window as any).bunmind.bench(o), { text: PROMPT, tokens, reps })) as { tokS: number[]; prefillMs: number[]; promptTokens: number }
      if (b.promptTokens !== ids.length) throw new Error(`prompt encodes to ${b.promptTokens} tokens in the page, ${ids.length} natively`)
      const st = stats(b.tokS)
      const backend = `wasm-${simd ? "simd" : "nosimd"}-chromium`
      row({ name: `decode (${label})`, backend, unit: "tok/s", value: st.median, spread: st.spread, baseline: "native-cpu-1t", ratio: st.median / base.median })
      row({ name: `prefill (${ids.length} prompt tokens)`, backend, unit: "ms", value: stats(b.prefillMs).median, baseline: "native-cpu-1t", ratio: stats(native.prefill_ms).median / stats(b.prefillMs).median })
    }
    row({ name: `prefill (${ids.length} prompt tokens)`, backend: "native-cpu-1t", unit: "ms", value: stats(native.prefill_ms).median })
    // Load times: native from disk; the page from the network (first visit) and from the Cache API (reload).
    row({ name: `model load (${preset} f32, ${(exp.weightsBytes / 1048576).toFixed(1)} MiB)`, backend: "native-cpu", unit: "ms", value: native.load_ms })
    const first = await open("?simd=1")
    const again = await open("?simd=1")
    if (Object.values(again.sources).some((x) => x !== "cache")) throw new Error(`reload did not use the browser cache: ${JSON.stringify(again.sources)}`)
    row({ name: `model load (${preset} f32, ${(exp.weightsBytes / 1048576).toFixed(1)} MiB)`, backend: "chromium-network", unit: "ms", value: first.loadMs, note: "loopback server; wasm compile + fetch + load" })
    row({ name: `model load (${preset} f32, ${(exp.weightsBytes / 1048576).toFixed(1)} MiB)`, backend: "chromium-cache", unit: "ms", value: again.loadMs })
  } finally {
    await browser.close()
    server.stop()
  }
  row({ name: "wasm size (SIMD build)", backend: "wasm", unit: "KiB", value: exp.wasmBytes / 1024, note: `gzip ${(exp.wasmGzipBytes / 1024).toFixed(0)} KiB` })
  row({ name: "page size (HTML+JS, no wasm/model)", backend: "wasm", unit: "KiB", value: exp.pageBytes / 1024, note: `gzip ${(exp.pageGzipBytes / 1024).toFixed(0)} KiB` })
  return rows
}

if (import.meta.main) {
  const quick = process.argv.includes("--quick")
  const rows = await edgeSuite(quick)
  const { md } = writeReport(quick ? "edge-quick" : "edge", rows, { quick })
  console.log(await Bun.file(md).text())
}
