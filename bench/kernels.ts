/**
 * Kernel suite: the engine's ops at minimind2-small's shapes (hidden 512, 8 q / 2 kv heads of 64,
 * FFN 1408, vocab 6400), on every backend present:
 *   - "TypeScript reference" (bench/lib/reference.ts): plain loops, the correctness oracle and the
 *     baseline every other row's ratio is taken against;
 *   - "candle CPU (bun:ffi)": `bm_kernel_*` → `core-rs/engine/src/kernels.rs` → the engine's own ops
 *     (timed per call, copies in and out included), plus the engine op alone (`op_ns`, no copies);
 *   - "wasm (Bun)": `dist/wasm/pkg` when it exports `kernel_*` functions (same arguments as the C
 *     ABI, minus the out pointers, returning a Float32Array);
 *   - "candle CUDA (bun:ffi)": `dist/native/libbunmind-cuda.so` when it loads and a GPU answers.
 * What the CPU rows run (call chains followed in the source; on CPU f32 every fused op's `cpu_fwd`
 * calls one row kernel of `core-rs/engine/src/ops/cpu.rs` per row, and the default training step,
 * `fast/dense.rs`, calls the very same functions on its own buffers):
 *   - rms_norm training form: `RmsNorm::forward_train` → `ops::rms_norm` → `cpu::rmsnorm_row`, the
 *     step's RMSNorm row. The "fused (inference)" row is candle's own `candle_nn::ops::rms_norm`,
 *     which no training path runs (the graph's inference forward does).
 *   - rope: `Rope::apply_train_bthd` → `ops::rope_bthd` → `cpu::rope_row` (sign +1), the step's row.
 *   - attention layer: projections through candle's `matmul_t`, RoPE as above, causal
 *     `ops::softmax_scaled` → `cpu::softmax_row`, the step's attention softmax row. The step itself
 *     multiplies through `fast/gemm.rs` (the same `gemm` crate, operands by stride, causal blocks
 *     only), so this row measures the graph's attention, with the step's softmax and RoPE rows.
 *   - cross-entropy forward: `masked_cross_entropy` → `ops::token_logprobs_fused` →
 *     `cpu::logprob_row` (the graph's forward); forward + backward adds `cpu::xent_row` per row,
 *     the step's fused loss + gradient row, scaled by the upstream gradient.
 *   - matmul: candle's `matmul_t` (the graph's products; the step's go through `fast/gemm.rs`).
 *   - AdamW: `AdamW::step`, what both training paths call.
 * Not reached from here (no kernel entry takes them, and the C entry points are fixed signatures,
 * not name-dispatched): the backward rows `cpu::rmsnorm_bwd_row` (`rmsnorm_dx_row`/`rmsnorm_dw_row`
 * in the graph), `cpu::softmax_bwd_row`, `cpu::rope_row` with sign −1, and SwiGLU
 * (`cpu::swiglu_fwd`/`swiglu_bwd`); `core-rs/engine/tests/ops.rs` checks them.
 * Correctness first: each backend runs the kernel once on the same inputs as the reference and is
 * compared with it (normalised max error max|got − ref| / max|ref| ≤ the kernel's tolerance). A
 * backend that disagrees gets a row with `check: "WRONG"`, its error as the value and no timing.
 * Timing: tinybench, R rounds (5; 3 in quick mode), backends interleaved within each round; each
 * round's median latency is one sample, and a row reports the median of the R samples with their
 * spread (max − min) / median.
 *   bun bench/kernels.ts [--quick]
 */
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { ptr } from "bun:ffi"
import { Bench } from "tinybench"
import { loadNativeSync, libraryPath, type NativeLib } from "../src/native/library.ts"
import * as ref from "./lib/reference.ts"
import { repoRoot, stats, writeReport, type Row } from "./lib/report.ts"

export interface KernelRow extends Row {
  /** "reference" for the oracle itself, "ok" when within tolerance, "WRONG" otherwise. */
  check?: "reference" | "ok" | "WRONG"
  max_err?: number
  tol?: number
}

/** Model shapes: minimind2-small. */
const H = 512
const HEADS = 8
const KV = 2
const HD = 64
const FFN = 1408
const VOCAB = 6400
const THETA = 1e6
const EPS = 1e-5

/** Inputs of one kernel call, and how each backend computes it. */
interface Kernel {
  name: string
  /** Floating-point operations of one call (for GFLOP/s and MFU), when meaningful. */
  flops?: number
  /** Normalised max error a backend may show against the reference. */
  tol: number
  reference: () => Float32Array
  native: (lib: NativeLib, out: Float32Array, opNs: BigUint64Array) => number
  /** wasm convention: the C ABI's arguments without out/out_len/op_ns, returning the output. */
  wasm: (w: WasmKernels) => Float32Array
  outLen: number
  /** What a whole call includes besides the op, when that matters for reading its row. */
  callNote?: string
}

type WasmFn = (...args: unknown[]) => Float32Array
type WasmKernels = Record<string, WasmFn>

const p = ptr

function kernels(quick: boolean): Kernel[] {
  // Tokens per call: b=1 × T. The plain-TS reference is O(10⁸–10⁹) multiply-adds per matmul at
  // these sizes, which bounds T.
  const T = quick ? 32 : 256
  let seed = 1
  const rnd = (n: number, scale = 1) => ref.randomF32(n, seed++ * 7919, scale)
  const out: Kernel[] = []

  // Matmuls: every linear of the model, x [T, in] · W [out, in]ᵀ.
  const x512 = rnd(T * H)
  const xFfn = rnd(T * FFN)
  const mm: [string, Float32Array, number, number][] = [
    ["q_proj / o_proj", x512, H, HEADS * HD],
    ["k_proj / v_proj", x512, H, KV * HD],
    ["gate_proj / up_proj", x512, H, FFN],
    ["down_proj", xFfn, FFN, H],
    ["lm_head (tied embedding)", x512, H, VOCAB],
  ]
  for (const [what, x, k, n] of mm) {
    const w = rnd(n * k, 0.05)
    out.push({
      name: `matmul ${what} [${T},${k}]·[${n},${k}]ᵀ`,
      flops: 2 * T * k * n,
      tol: 1e-4,
      outLen: T * n,
      reference: () => ref.matmulT(x, w, T, k, n),
      native: (lib, o, ns) => lib.sym.bm_kernel_matmul(p(x), p(w), T, k, n, p(o), o.length, p(ns)),
      wasm: (m) => m.kernel_matmul!(x, w, T, k, n),
    })
  }

  // RMSNorm, training form and fused inference form.
  {
    const x = rnd(T * H, 2)
    const w = rnd(H, 1)
    for (const train of [true, false]) {
      out.push({
        name: `rms_norm ${train ? "training form" : "fused (inference)"} [${T},${H}]`,
        tol: 1e-4,
        outLen: T * H,
        reference: () => ref.rmsNorm(x, w, T, H, EPS),
        native: (lib, o, ns) => lib.sym.bm_kernel_rms_norm(p(x), p(w), T, H, EPS, train ? 1 : 0, p(o), o.length, p(ns)),
        wasm: (m) => m.kernel_rms_norm!(x, w, T, H, EPS, train),
      })
    }
  }

  // RoPE on q [1, 8, T, 64] and k [1, 2, T, 64], both pair styles (training form).
  {
    const q = rnd(HEADS * T * HD)
    const k = rnd(KV * T * HD)
    for (const interleaved of [false, true]) {
      out.push({
        name: `rope ${interleaved ? "interleaved (seed v1)" : "rotate-half"} q [1,${HEADS},${T},${HD}] + k [1,${KV},${T},${HD}]`,
        tol: 1e-4,
        outLen: q.length + k.length,
        reference: () => {
          const tables = ref.ropeTables(T, HD, THETA)
          const r = new Float32Array(q.length + k.length)
          r.set(ref.rope(q, 1, HEADS, T, HD, tables, interleaved))
          r.set(ref.rope(k, 1, KV, T, HD, tables, interleaved), q.length)
          return r
        },
        native: (lib, o, ns) => lib.sym.bm_kernel_rope(p(q), p(k), 1, HEADS, KV, T, HD, THETA, interleaved ? 1 : 0, p(o), o.length, p(ns)),
        wasm: (m) => m.kernel_rope!(q, k, 1, HEADS, KV, T, HD, THETA, interleaved),
      })
    }
  }

  // Attention layer, training mode.
  {
    const shape: ref.AttentionShape = { b: 1, t: T, hidden: H, heads: HEADS, kvHeads: KV, headDim: HD, theta: THETA }
    const x = rnd(T * H)
    const wq = rnd(HEADS * HD * H, 0.05)
    const wk = rnd(KV * HD * H, 0.05)
    const wv = rnd(KV * HD * H, 0.05)
    const wo = rnd(H * HEADS * HD, 0.05)
    const proj = 2 * T * H * (2 * HEADS * HD + 2 * KV * HD)
    const core = 2 * 2 * HEADS * T * T * HD // q·kᵀ and p·v over the full T×T (as computed)
    out.push({
      name: `attention layer, training form (proj + RoPE + GQA causal softmax), b=1 × T=${T}`,
      flops: proj + core,
      tol: 1e-4,
      outLen: T * H,
      reference: () => ref.attention(shape, x, wq, wk, wv, wo),
      native: (lib, o, ns) => lib.sym.bm_kernel_attention(p(x), p(wq), p(wk), p(wv), p(wo), 1, T, H, HEADS, KV, HD, THETA, p(o), o.length, p(ns)),
      wasm: (m) => m.kernel_attention!(x, wq, wk, wv, wo, 1, T, H, HEADS, KV, HD, THETA),
    })
  }

  // Masked softmax cross-entropy over the vocabulary: forward, and forward + backward.
  {
    const logits = rnd(T * VOCAB, 4)
    const targets = new Uint32Array(T).map((_, i) => (i * 2654435761) % VOCAB)
    const mask = new Float32Array(T).map((_, i) => (i % 5 === 4 ? 0 : 1))
    for (const grad of [false, true]) {
      out.push({
        name: `masked softmax cross-entropy ${grad ? "forward + backward" : "forward"} [1,${T},${VOCAB}]`,
        tol: 1e-4,
        outLen: grad ? 1 + T * VOCAB : 1,
        reference: () => ref.crossEntropy(logits, targets, mask, T, VOCAB, grad),
        native: (lib, o, ns) => lib.sym.bm_kernel_cross_entropy(p(logits), p(targets), p(mask), 1, T, VOCAB, grad ? 1 : 0, p(o), o.length, p(ns)),
        wasm: (m) => m.kernel_cross_entropy!(logits, targets, mask, 1, T, VOCAB, grad),
      })
    }
  }

  // One AdamW step on one weight matrix (a gate_proj: 512 × 1408; q_proj 512 × 512 in quick mode).
  {
    const n = quick ? H * H : H * FFN
    const w = rnd(n, 0.05)
    const g = rnd(n, 1e-3)
    const m = rnd(n, 1e-4)
    const v = rnd(n, 1e-7).map(Math.abs)
    const a: ref.AdamWArgs = { step: 10, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }
    out.push({
      name: `AdamW step (wd 0.01, step 10) on ${n.toLocaleString("en")} parameters`,
      tol: 1e-5,
      outLen: 3 * n,
      callNote:
        "the whole call also restores the optimizer state (m, v, step) and builds the gradient store, which a training step does not do: read the engine-op row for the step itself",
      reference: () => ref.adamw(w, g, m, v, a),
      native: (lib, o, ns) => lib.sym.bm_kernel_adamw(p(w), p(g), p(m), p(v), n, BigInt(a.step), a.lr, a.beta1, a.beta2, a.eps, a.weightDecay, p(o), o.length, p(ns)),
      wasm: (mod) => mod.kernel_adamw!(w, g, m, v, a.step, a.lr, a.beta1, a.beta2, a.eps, a.weightDecay),
    })
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// Backends.

interface Backend {
  name: string
  /** Computes one call; returns the output and the engine op's own time when it reports one. */
  call?: (k: Kernel) => { out: Float32Array; opNs?: number }
  /** Why the backend is not measured. */
  absent?: string
  /** GPU peak FP32 FLOP/s, for MFU. */
  peakFlops?: number
  device?: string
}

/**
 * `BUNMIND_BENCH_FAULT=<backend name prefix>` corrupts that backend's outputs (first value + 1):
 * a self-test of the correctness gate, which must then report the backend as WRONG.
 */
const fault = process.env.BUNMIND_BENCH_FAULT

function nativeBackend(name: string, lib: NativeLib): Backend {
  const bufs = new Map<Kernel, Float32Array>()
  const ns = new BigUint64Array(1)
  const corrupt = !!fault && name.startsWith(fault)
  return {
    name,
    call: (k) => {
      let o = bufs.get(k)
      if (!o) bufs.set(k, (o = new Float32Array(k.outLen)))
      lib.check(k.name, k.native(lib, o, ns))
      if (corrupt) o[0] = o[0]! + 1
      return { out: o, opNs: Number(ns[0]) }
    },
  }
}

/** GPU name and FP32 (non-tensor-core) peak, from nvidia-smi and a table of datasheet figures. */
function gpuInfo(): { name: string; peak?: number } | undefined {
  const r = Bun.spawnSync(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], { stderr: "pipe" })
  if (r.exitCode !== 0) return undefined
  const name = r.stdout.toString().trim().split("\n")[0] ?? "GPU"
  const table: [RegExp, number][] = [
    [/H200/, 67e12],
    [/H100.*PCIe/, 51e12],
    [/H100/, 67e12],
    [/A100/, 19.5e12],
    [/L40S/, 91.6e12],
    [/L4\b/, 30.3e12],
    [/A10G?\b/, 31.2e12],
    [/RTX 4090/, 82.6e12],
    [/T4\b/, 8.1e12],
  ]
  return { name, peak: table.find(([re]) => re.test(name))?.[1] }
}

async function backends(): Promise<Backend[]> {
  const list: Backend[] = [{ name: "TypeScript reference", call: (k) => ({ out: k.reference() }) }]
  const cpu = loadNativeSync("cpu")
  list.push(nativeBackend("candle CPU (bun:ffi)", cpu))

  // wasm in Bun: the browser build, if it exposes kernel entry points.
  const pkg = join(repoRoot, "dist", "wasm", "pkg")
  const wasmName = "wasm (Bun)"
  if (!existsSync(pkg)) list.push({ name: wasmName, absent: `not present: ${pkg} not built (bun scripts/build-wasm.ts)` })
  else {
    try {
      const js = readdirSync(pkg).find((f) => f.endsWith(".js") && !f.endsWith("_bg.js"))
      const wasmFile = readdirSync(pkg).find((f) => f.endsWith(".wasm"))
      if (!js || !wasmFile) throw new Error(`no .js/.wasm in ${pkg}`)
      const mod = (await import(join(pkg, js))) as WasmKernels & { default?: (o: unknown) => Promise<unknown> }
      const fns = Object.keys(mod).filter((k) => k.startsWith("kernel_"))
      if (!fns.length) list.push({ name: wasmName, absent: `not present: ${pkg}/${js} exports no kernel_* functions (the wasm build ships the chat model only)` })
      else {
        if (typeof mod.default === "function") await mod.default({ module_or_path: readFileSync(join(pkg, wasmFile)) })
        list.push({ name: wasmName, call: (k) => ({ out: k.wasm(mod) }) })
      }
    } catch (e) {
      list.push({ name: wasmName, absent: `not present: ${(e as Error).message}` })
    }
  }

  // CUDA: the second library build, when it exists, loads and finds a device.
  const cudaName = "candle CUDA (bun:ffi)"
  const cudaPath = libraryPath("cuda")
  if (!existsSync(cudaPath)) list.push({ name: cudaName, absent: `not present: ${cudaPath} not built (bun run build:native --cuda, on a machine with nvcc)` })
  else {
    try {
      const lib = loadNativeSync("cuda")
      if (!lib.buildInfo().cuda) throw new Error(`${cudaPath} is not a CUDA build`)
      const gpu = gpuInfo()
      if (!gpu) throw new Error("nvidia-smi finds no GPU")
      list.push({ ...nativeBackend(cudaName, lib), peakFlops: gpu.peak, device: gpu.name })
    } catch (e) {
      list.push({ name: cudaName, absent: `not present: ${(e as Error).message}` })
    }
  }
  return list
}

// ---------------------------------------------------------------------------------------------

/** Backends that were not measured, with the reason (filled by the last `kernelSuite` run). */
export const absentBackends: Record<string, string> = {}

export async function kernelSuite(quick = false): Promise<KernelRow[]> {
  const ks = kernels(quick)
  const bs = await backends()
  for (const b of bs) if (b.absent) absentBackends[b.name] = b.absent
  const live = bs.filter((b) => b.call)
  const rounds = quick ? 3 : 5
  const budget = quick ? 30 : 120 // ms per task per round
  const rows: KernelRow[] = []
  const refName = live[0]!.name

  for (const k of ks) {
    // Correctness: every backend against the reference on the same inputs.
    const want = k.reference()
    const ok: Backend[] = []
    const errs = new Map<Backend, number>()
    for (const b of live) {
      if (b.name === refName) {
        ok.push(b)
        continue
      }
      let err: number
      try {
        err = ref.maxRelError(b.call!(k).out, want)
      } catch (e) {
        console.error(`[bench] kernels ${k.name} on ${b.name}: ${(e as Error).message}`)
        err = Infinity
      }
      errs.set(b, err)
      if (err <= k.tol) ok.push(b)
      else
        rows.push({
          suite: "kernels",
          name: k.name,
          backend: b.name,
          unit: "max rel. error",
          value: Number.isFinite(err) ? err : Number.MAX_VALUE,
          check: "WRONG",
          max_err: err,
          tol: k.tol,
          note: `WRONG: max |got − ref| / max |ref| = ${err.toExponential(2)} > tolerance ${k.tol}; not timed`,
        })
    }

    // Timing: rounds of tinybench, backends interleaved, a round's median is one sample.
    const samples = new Map<Backend, number[]>(ok.map((b) => [b, []]))
    const opSamples = new Map<Backend, number[]>(ok.map((b) => [b, []]))
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? ok : [...ok].reverse()
      const ops = new Map<Backend, number[]>(ok.map((b) => [b, []]))
      const bench = new Bench({ time: budget, iterations: 1, warmup: r === 0, warmupIterations: 1, warmupTime: 0, throws: true })
      for (const b of order)
        bench.add(b.name, () => {
          const o = b.call!(k).opNs
          if (o !== undefined) ops.get(b)!.push(o / 1e6)
        })
      await bench.run()
      for (const b of order) {
        const res = bench.getTask(b.name)?.result as { latency?: { p50: number } } | undefined
        const p50 = res?.latency?.p50
        if (p50 === undefined) throw new Error(`tinybench gave no result for ${k.name} on ${b.name}`)
        samples.get(b)!.push(p50)
        const o = ops.get(b)!
        if (o.length) opSamples.get(b)!.push(stats(o).median)
      }
    }
    const refStats = stats(samples.get(ok[0]!)!)
    for (const b of ok) {
      const s = stats(samples.get(b)!)
      const isRef = b.name === refName
      const err = errs.get(b)
      const gflops = k.flops ? k.flops / (s.median / 1e3) / 1e9 : undefined
      const parts = [isRef ? "reference (correctness oracle)" : `ok: max rel. error ${err!.toExponential(1)} ≤ ${k.tol}`]
      if (gflops !== undefined) parts.push(`${gflops.toFixed(gflops >= 10 ? 0 : 2)} GFLOP/s per call`)
      if (!isRef && k.callNote) parts.push(k.callNote)
      if (b.peakFlops && k.flops) parts.push(`MFU ${((100 * k.flops) / (s.median / 1e3) / b.peakFlops).toFixed(1)}% of ${b.device} FP32 peak ${(b.peakFlops / 1e12).toFixed(1)} TFLOP/s`)
      rows.push({
        suite: "kernels",
        name: k.name,
        backend: b.name,
        unit: "ms/call",
        value: s.median,
        spread: s.spread,
        ...(isRef ? {} : { baseline: refName, ratio: refStats.median / s.median }),
        check: isRef ? "reference" : "ok",
        ...(err !== undefined ? { max_err: err } : {}),
        tol: k.tol,
        note: parts.join("; "),
      })
      const o = opSamples.get(b)!
      if (o.length) {
        const so = stats(o)
        let og = k.flops ? `; ${(k.flops / (so.median / 1e3) / 1e9).toFixed(1)} GFLOP/s` : ""
        if (b.peakFlops && k.flops) og += `; MFU ${((100 * k.flops) / (so.median / 1e3) / b.peakFlops).toFixed(1)}% of ${b.device} FP32 peak`
        rows.push({
          suite: "kernels",
          name: k.name,
          backend: `${b.name.replace(" (bun:ffi)", "")}, engine op only`,
          unit: "ms/call",
          value: so.median,
          spread: so.spread,
          baseline: refName,
          ratio: refStats.median / so.median,
          check: "ok",
          tol: k.tol,
          note: `the engine op without copying inputs/outputs across the FFI (call − op = ${Math.max(0, (s.median - so.median) * 1e3).toFixed(1)} µs)${og}`,
        })
      }
    }
    console.error(`[bench] kernels ${k.name}: ${ok.map((b) => `${b.name} ${stats(samples.get(b)!).median.toPrecision(3)} ms`).join(", ")}`)
  }

  // Per-call cost of a kernel call through bun:ffi: the smallest kernel, call time − op time.
  const cpu = live.find((b) => b.name.startsWith("candle CPU"))
  if (cpu) {
    const x = ref.randomF32(8, 3)
    const w = ref.randomF32(8, 4)
    const tiny: Kernel = {
      name: "tiny",
      tol: 1e-4,
      outLen: 8,
      reference: () => ref.rmsNorm(x, w, 1, 8, EPS),
      native: (lib, o, ns) => lib.sym.bm_kernel_rms_norm(p(x), p(w), 1, 8, EPS, 0, p(o), o.length, p(ns)),
      wasm: (m) => m.kernel_rms_norm!(x, w, 1, 8, EPS, false),
    }
    const call: number[] = []
    const over: number[] = []
    for (let r = 0; r < rounds; r++) {
      const ops: number[] = []
      const bench = new Bench({ time: quick ? 50 : 200, warmup: true, throws: true })
      bench.add("tiny", () => {
        ops.push(cpu.call!(tiny).opNs! / 1e6)
      })
      await bench.run()
      const p50 = (bench.tasks[0]!.result as { latency: { p50: number } }).latency.p50
      call.push(p50 * 1e6)
      over.push((p50 - stats(ops).median) * 1e6)
    }
    const sc = stats(call)
    const so = stats(over)
    rows.push(
      { suite: "ffi", name: "bm_kernel_rms_norm [1,8] (whole call)", backend: "candle CPU (bun:ffi)", unit: "ns/call", value: sc.median, spread: sc.spread },
      {
        suite: "ffi",
        name: "kernel call overhead: call − engine op (bun:ffi + tensors in/out)",
        backend: "candle CPU (bun:ffi)",
        unit: "ns/call",
        value: Math.max(1, so.median),
        spread: so.spread,
        note: "bm_kernel_rms_norm on 8 floats: the time not spent in the engine op",
      },
    )
  }
  return rows
}

if (import.meta.main) {
  const quick = process.argv.includes("--quick")
  const rows = await kernelSuite(quick)
  const { json, md } = writeReport(quick ? "kernels-quick" : "kernels", rows, { quick, absent_backends: absentBackends })
  console.log(readFileSync(md, "utf8"))
  console.error(`wrote ${json} and ${md}`)
}
