/**
 * What a machine without a GPU (or without the CUDA build) sees: `--device cuda` and `--nproc N`
 * fail with one clear line that says what is missing and how to get it, never a stack trace;
 * the CPU path is unchanged. Also the pure parts of data-parallel training (rank environment,
 * per-rank sharding, the `--nproc` checks) and the parity harness of the fused ops on the CPU.
 * The GPU side of all this runs in `bench/gpu/run.sh`.
 */
import { describe, expect, test } from "bun:test"
import { ptr } from "bun:ffi"
import { existsSync, mkdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { initModelSync } from "../src/model/model.ts"
import { NativeLoadError } from "../src/native/errors.ts"
import { libraryPath, loadNativeSync, parseDeviceName, ptrOf, utf8, type NativeLib } from "../src/native/library.ts"
import { distEnv, nprocProblem, type NprocFacts } from "../src/train/distributed.ts"
import { rankMicroBatches, rankSplitProblem } from "../src/train/index.ts"
import { cli, repo } from "./helpers/cli.ts"
import * as ref from "../bench/lib/reference.ts"

const out = join(import.meta.dir, ".out", "cuda-device")
const noCudaLib = { BUNMIND_CUDA_LIB: "/nonexistent/libbunmind-cuda.so" }

/** True when this machine has an NVIDIA driver (then `--device cuda` may well work). */
const hasDriver = ["/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/lib/wsl/lib/libcuda.so.1"].some(existsSync)

/** One user-facing error line, no stack trace. */
function expectCleanError(r: { code: number | null; stdout: string; stderr: string }, ...parts: RegExp[]) {
  expect(r.code).toBe(1)
  expect(r.stderr.startsWith("error: ")).toBe(true)
  expect(r.stderr).not.toMatch(/\n\s+at /)
  expect(r.stderr).not.toMatch(/panic|RUST_BACKTRACE/)
  for (const p of parts) expect(r.stderr).toMatch(p)
}

describe("--device", () => {
  test("names: cpu, cuda, cuda:N; anything else is a usage error", () => {
    expect(parseDeviceName("cpu")).toBe("cpu")
    expect(parseDeviceName("cuda")).toBe("cuda")
    expect(parseDeviceName("cuda:3")).toBe("cuda:3")
    for (const bad of ["gpu0", "cuda:", "cuda:x", "CUDA", "cuda:-1", ""]) expect(parseDeviceName(bad)).toBeNull()
    const r = cli(["model", "init", "--preset", "tiny", "--out", join(out, "x"), "--device", "tpu"])
    expectCleanError(r, /--device tpu: expected cpu, cuda or cuda:N/)
  })

  test("without the CUDA build, --device cuda says what is missing and how to build it", () => {
    for (const args of [
      ["model", "init", "--preset", "tiny", "--out", join(out, "y"), "--device", "cuda"],
      ["model", "info", "--model", join(out, "y"), "--device", "cuda:1"],
    ]) {
      const r = cli(args, undefined, noCudaLib)
      expectCleanError(r, /needs the CUDA build/, /bun scripts\/build-native\.ts --cuda/, /--device cpu/)
    }
  })

  test("with the CUDA build but no NVIDIA driver, loading it explains that", () => {
    const path = libraryPath("cuda")
    if (!existsSync(path) || hasDriver) {
      console.warn(`skipped: ${existsSync(path) ? "this machine has an NVIDIA driver" : `no CUDA build at ${path}`}`)
      return
    }
    const r = cli(["model", "init", "--preset", "tiny", "--out", join(out, "z"), "--device", "cuda"])
    expectCleanError(r, /no NVIDIA driver/, /libcuda\.so\.1/, /--device cpu/)
  })

  test("with the CUDA build and a driver that finds no GPU, the driver's own error is passed on", () => {
    // A fake libcuda.so.1 whose cuInit reports CUDA_ERROR_NO_DEVICE (every other entry point
    // returns CUDA_ERROR_UNKNOWN), plus the link stubs standing in for cuBLAS/cuRAND: this loads
    // the real CUDA build (all its dependencies resolve) and walks the no-GPU path.
    const path = libraryPath("cuda")
    const stubs = join(repo, ".cuda", "stubs", "lib", "stubs")
    if (!existsSync(path) || !existsSync(join(stubs, "libcuda.so")) || hasDriver) {
      console.warn("skipped: needs the CUDA build and its link stubs (bun scripts/build-native.ts --cuda), and no real driver")
      return
    }
    const dir = join(out, "fake-driver")
    mkdirSync(dir, { recursive: true })
    const nm = Bun.spawnSync(["nm", "-D", "--defined-only", join(stubs, "libcuda.so")], { stdout: "pipe" })
    const fns = nm.stdout.toString().split("\n").map((l) => l.trim().split(/\s+/)[2]).filter((f): f is string => !!f && f.startsWith("cu"))
    const special = new Set(["cuInit", "cuGetErrorString", "cuGetErrorName", "cuDeviceGetCount", "cuDriverGetVersion"])
    const c = [
      "int cuInit(unsigned f) { (void)f; return 100; }",
      'int cuGetErrorString(int e, const char** s) { (void)e; *s = "no CUDA-capable device is detected"; return 0; }',
      'int cuGetErrorName(int e, const char** s) { (void)e; *s = "CUDA_ERROR_NO_DEVICE"; return 0; }',
      "int cuDeviceGetCount(int* n) { *n = 0; return 100; }",
      "int cuDriverGetVersion(int* v) { *v = 13000; return 0; }",
      ...fns.filter((f) => !special.has(f)).map((f) => `int ${f}(void) { return 999; }`),
    ].join("\n")
    writeFileSync(join(dir, "fake.c"), c)
    const cc = Bun.spawnSync(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", join(dir, "libcuda.so.1"), join(dir, "fake.c")], { stderr: "pipe" })
    expect(cc.exitCode).toBe(0)
    for (const [soname, file] of [["libcublas.so.13", "libcublas.so"], ["libcublasLt.so.13", "libcublasLt.so"], ["libcurand.so.10", "libcurand.so"], ["libnvrtc.so.13", "libnvrtc.so"], ["libcudart.so.13", "libcudart.so"], ["libnccl.so.2", "libnccl.so"]]) {
      rmSync(join(dir, soname!), { force: true })
      symlinkSync(realpathSync(join(stubs, file!)), join(dir, soname!))
    }
    const r = cli(["model", "init", "--preset", "tiny", "--out", join(out, "w"), "--device", "cuda"], undefined, { LD_LIBRARY_PATH: dir })
    expectCleanError(r, /CUDA driver could not be initialised/, /CUDA_ERROR_NO_DEVICE/, /CUDA_VISIBLE_DEVICES/)
    const n = cli(["train", "pretrain", "--data", join(out, "none.jsonl"), "--run-dir", join(out, "run"), "--nproc", "2", "--device", "cuda"], undefined, { LD_LIBRARY_PATH: dir })
    expectCleanError(n, /--nproc 2/, /NCCL/, /CUDA driver could not be initialised/)
  })

  test("the CPU library refuses a CUDA device with a message naming the CPU build", () => {
    const lib = loadNativeSync("cpu")
    expect(lib.openDevice("cpu").device).toBe("cpu")
    expect(lib.openDevice("cpu").cuda_build).toBe(false)
    expect(() => lib.openDevice("cuda:0")).toThrow(/CPU build.*--cuda/)
    try {
      lib.openDevice("cuda:0")
    } catch (e) {
      expect(e).toBeInstanceOf(NativeLoadError)
    }
    expect(lib.buildInfo().cuda).toBe(false)
  })

  test("the CPU path is unchanged: models are created and loaded on the CPU", () => {
    const lib = loadNativeSync("cpu")
    const m = initModelSync({ preset: "tiny" }, 1, lib)
    try {
      expect(m.info().device).toBe("cpu")
      m.save(join(out, "cpu-model"))
    } finally {
      m.free()
    }
    const r = cli(["model", "info", "--model", join(out, "cpu-model"), "--device", "cpu"])
    expect(r.code).toBe(0)
    expect(JSON.parse(r.stdout).device).toBe("cpu")
  })

  test("a bad device in the model config JSON is an argument error, not a crash", () => {
    const lib = loadNativeSync("cpu")
    const c = utf8(JSON.stringify({ preset: "tiny", device: "cuda:7" }))
    const box = new Uint32Array(1)
    const code = lib.sym.bm_model_init(ptrOf(c), c.byteLength, 1n, ptrOf(box))
    expect(code).not.toBe(0)
    expect(lib.lastError()).toMatch(/cuda:7.*CPU build/)
  })
})

describe("--nproc (data-parallel training)", () => {
  test("N > 1 on the CPU fails before any work, naming NCCL and the GPUs needed", () => {
    rmSync(out, { recursive: true, force: true })
    mkdirSync(out, { recursive: true })
    const r = cli(["train", "pretrain", "--data", join(out, "none.jsonl"), "--run-dir", join(out, "run"), "--nproc", "2"])
    expectCleanError(r, /--nproc 2/, /NCCL/, /2 GPUs/, /--device cuda/)
    expect(existsSync(join(out, "run"))).toBe(false)
  })

  test("N > 1 with --device cuda but no CUDA build says the build is missing", () => {
    const r = cli(["train", "sft", "--data", join(out, "none.jsonl"), "--run-dir", join(out, "run"), "--nproc", "4", "--device", "cuda"], undefined, noCudaLib)
    expectCleanError(r, /--nproc 4/, /NCCL/, /CUDA build/, /build-native\.ts --cuda/)
  })

  test("N < 1 is a usage error; N = 1 is the normal single-process run", () => {
    const r = cli(["train", "pretrain", "--data", join(out, "none.jsonl"), "--run-dir", join(out, "run"), "--nproc", "0"])
    expectCleanError(r, /--nproc 0: must be a positive integer/)
    const one = cli(["train", "pretrain", "--data", join(out, "none.jsonl"), "--run-dir", join(out, "run"), "--nproc", "1"])
    // Gets past the --nproc check to the next one (no tokenizer in this empty run).
    expectCleanError(one, /no tokenizer/)
  })

  test("the pipeline checks --nproc / \"nproc\" and \"device\" the same way", () => {
    const cfg = join(out, "pipe.json")
    writeFileSync(cfg, JSON.stringify({ run: join(out, "prun"), stages: [{ stage: "pretrain", data: ["x.jsonl"] }] }))
    expectCleanError(cli(["pipeline", "run", cfg, "--nproc", "2"]), /--nproc 2/, /NCCL/)
    writeFileSync(cfg, JSON.stringify({ run: join(out, "prun"), nproc: 8, device: "cuda", stages: [{ stage: "pretrain", data: ["x.jsonl"] }] }))
    expectCleanError(cli(["pipeline", "run", cfg], undefined, noCudaLib), /--nproc 8/, /CUDA build/)
    writeFileSync(cfg, JSON.stringify({ run: join(out, "prun"), device: "tpu", stages: [{ stage: "pretrain", data: ["x.jsonl"] }] }))
    expectCleanError(cli(["pipeline", "run", cfg]), /device: expected cpu, cuda or cuda:N/)
  })

  test("nprocProblem: each missing piece is named", () => {
    const facts = (f: NprocFacts["cuda"]) => () => ({ cuda: f })
    const never = () => {
      throw new Error("facts must not be loaded")
    }
    expect(nprocProblem(1, "cpu", never)).toBeNull()
    expect(nprocProblem(2, "cpu", never)).toMatch(/this run is on the CPU/)
    expect(nprocProblem(2, "cpu", never)).toMatch(/--dist-backend tcp/)
    // The socket backend runs anywhere (no GPU facts needed).
    expect(nprocProblem(2, "cpu", never, "tcp")).toBeNull()
    expect(nprocProblem(2, "cuda:1", never, "tcp")).toMatch(/ranks use cuda:0..cuda:1/)
    expect(nprocProblem(2, "cuda:1", never)).toMatch(/ranks use cuda:0..cuda:1/)
    expect(nprocProblem(2, "cuda", facts({ ok: false, reason: "no NVIDIA driver" }))).toMatch(/no NVIDIA driver/)
    expect(nprocProblem(4, "cuda", facts({ ok: true, gpus: 2, nccl: true }))).toMatch(/this machine has 2 GPU\(s\)/)
    expect(nprocProblem(2, "cuda", facts({ ok: true, gpus: 8, nccl: false }))).toMatch(/has no NCCL: rebuild it/)
    expect(nprocProblem(2, "cuda", facts({ ok: true, gpus: 2, nccl: true }))).toBeNull()
  })

  test("each rank trains on a contiguous share of the step, in micro-batches of at most --batch-size rows", () => {
    const step = [9, 3, 7, 1, 0, 4, 8, 2]
    const shares = [0, 1, 2, 3].map((r) => rankMicroBatches(step, 4, r, 4))
    expect(shares).toEqual([[[9, 3]], [[7, 1]], [[0, 4]], [[8, 2]]])
    // Two ranks, batch 2: each rank's 4 rows in two micro-batches; the union is the step, in order.
    const two = [0, 1].map((r) => rankMicroBatches(step, 2, r, 2))
    expect(two).toEqual([[[9, 3], [7, 1]], [[0, 4], [8, 2]]])
    expect(two.flat(2)).toEqual(step)
    // A share that batch 4 does not divide: the largest micro-batch that does (6 rows → 3 + 3).
    expect(rankMicroBatches([...step, 5, 6, 10, 11], 4, 0, 2)).toEqual([[9, 3, 7], [1, 0, 4]])
    expect(rankMicroBatches(step, 4, 0, 1)).toEqual([[9, 3, 7, 1], [0, 4, 8, 2]])
    // A short step (an epoch's last batch) that 3 ranks cannot split evenly: shares of 2, 3, 3
    // rows (first ranks one fewer), together the step in order; 9 rows over 4 ranks with batch 2.
    const three = [0, 1, 2].map((r) => rankMicroBatches(step, 4, r, 3))
    expect(three).toEqual([[[9, 3]], [[7, 1, 0]], [[4, 8, 2]]])
    expect(three.flat(2)).toEqual(step)
    const four = [0, 1, 2, 3].map((r) => rankMicroBatches([...step, 6], 2, r, 4))
    expect(four.map((s) => s.map((m) => m.length))).toEqual([[2], [2], [2], [1, 2]])
    expect(four.flat(2)).toEqual([...step, 6])
    // Fewer rows than ranks: some ranks get none.
    expect([0, 1, 2].map((r) => rankMicroBatches([5], 4, r, 3))).toEqual([[], [], [[5]]])
    expect(rankSplitProblem({ batchSize: 4, accum: 1 }, 2)).toBeNull()
    expect(rankSplitProblem({ batchSize: 4, accum: 2, accumMean: "micro" }, 2)).toMatch(/--accum-mean micro/)
    expect(rankSplitProblem({ batchSize: 4, accum: 2, accumMean: "micro" }, 1)).toBeNull()
    expect(rankSplitProblem({ batchSize: 3, accum: 1 }, 2)).toMatch(/--nproc 2 must divide .*--batch-size 3 × --accum 1 = 3.*--accum 2/)
  })

  test("rank environment: BUNMIND_* first, torchrun's names as a fallback", () => {
    expect(distEnv({})).toEqual({ rank: 0, worldSize: 1, localRank: 0 })
    expect(distEnv({ BUNMIND_RANK: "1", BUNMIND_WORLD_SIZE: "2" })).toEqual({ rank: 1, worldSize: 2, localRank: 1 })
    expect(distEnv({ RANK: "3", WORLD_SIZE: "4", LOCAL_RANK: "1" })).toEqual({ rank: 3, worldSize: 4, localRank: 1 })
    expect(() => distEnv({ BUNMIND_RANK: "2", BUNMIND_WORLD_SIZE: "2" })).toThrow(/outside a world of 2/)
  })
})

describe("--precision", () => {
  test("bf16 autocast trains on the CPU too (f32 master weights), close to f32; auto is f32 there", () => {
    const dir = join(out, "precision")
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(dir, { recursive: true })
    const corpus = join(dir, "corpus.jsonl")
    writeFileSync(corpus, Array.from({ length: 120 }, (_, i) => JSON.stringify({ text: `story ${i}: the ${["cat", "dog", "fox"][i % 3]} ran ${i % 7} times.` })).join("\n") + "\n")
    const tok = join(dir, "tok")
    expect(cli(["tokenizer", "train", "--data", corpus, "--vocab-size", "300", "--out", tok]).code).toBe(0)
    const run = (name: string, precision: string) => {
      const r = cli(["train", "pretrain", "--run-dir", join(dir, name), "--tokenizer", tok, "--data", corpus, "--preset", "tiny", "--seq-len", "32",
        "--batch-size", "4", "--steps", "4", "--lr", "3e-3", "--eval-every", "0", "--precision", precision], undefined, { RAYON_NUM_THREADS: "1" })
      expect(r.code).toBe(0)
      const losses = readFileSync(join(dir, name, "pretrain", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l).loss as number)
      return { losses, stderr: r.stderr }
    }
    const auto = run("auto", "auto")
    expect(auto.stderr).toMatch(/on cpu in f32/)
    const bf16 = run("bf16", "bf16")
    expect(bf16.stderr).toMatch(/on cpu in bf16/)
    for (let i = 0; i < 4; i++) expect(Math.abs(bf16.losses[i]! - auto.losses[i]!) / auto.losses[i]!).toBeLessThan(2e-2)
    const bad = cli(["train", "pretrain", "--data", corpus, "--precision", "fp8"])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/Invalid value for flag --precision: "fp8"/)
  })
})

/** The fused ops that `bm_kernel_*` reaches (RMSNorm in both forms, RoPE in both pair layouts,
 *  masked cross-entropy with its gradient) on `lib`'s device, against the plain TypeScript
 *  implementations in bench/lib/reference.ts (loops, f64 accumulation: no engine code involved).
 *  Returns one row per call: its normalised max error and the tolerance. */
function againstPlainReference(lib: NativeLib): { what: string; err: number; tol: number }[] {
  const [T, H, HEADS, KV, HD, V, THETA, EPS] = [24, 512, 8, 2, 64, 6400, 1e6, 1e-5]
  const rows: { what: string; err: number; tol: number }[] = []
  const run = (what: string, tol: number, want: Float32Array, call: (o: Float32Array) => number) => {
    const o = new Float32Array(want.length)
    lib.check(what, call(o))
    rows.push({ what, err: ref.maxRelError(o, want), tol })
  }
  const x = ref.randomF32(T * H, 11, 2)
  const w = ref.randomF32(H, 12)
  for (const train of [1, 0]) run(`rms_norm train=${train}`, 1e-4, ref.rmsNorm(x, w, T, H, EPS), (o) => lib.sym.bm_kernel_rms_norm(ptr(x), ptr(w), T, H, EPS, train, ptr(o), o.length, null))
  const q = ref.randomF32(HEADS * T * HD, 13)
  const k = ref.randomF32(KV * T * HD, 14)
  const tables = ref.ropeTables(T, HD, THETA)
  for (const interleaved of [false, true]) {
    const want = new Float32Array(q.length + k.length)
    want.set(ref.rope(q, 1, HEADS, T, HD, tables, interleaved))
    want.set(ref.rope(k, 1, KV, T, HD, tables, interleaved), q.length)
    run(`rope interleaved=${interleaved}`, 1e-4, want, (o) => lib.sym.bm_kernel_rope(ptr(q), ptr(k), 1, HEADS, KV, T, HD, THETA, interleaved ? 1 : 0, ptr(o), o.length, null))
  }
  const logits = ref.randomF32(T * V, 15, 4)
  const targets = new Uint32Array(T).map((_, i) => (i * 2654435761) % V)
  const mask = new Float32Array(T).map((_, i) => (i % 5 === 4 ? 0 : 1))
  for (const grad of [0, 1]) run(`cross-entropy grad=${grad}`, 1e-4, ref.crossEntropy(logits, targets, mask, T, V, grad === 1), (o) => lib.sym.bm_kernel_cross_entropy(ptr(logits), ptr(targets), ptr(mask), 1, T, V, grad, ptr(o), o.length, null))
  return rows
}

interface ParityReport {
  ok: boolean
  device: string
  cuda_kernels: boolean
  rows: { op: string; dtype: string; what: string; rel_err: number; tol: number; ok: boolean }[]
}
const parityCheck = (lib: NativeLib, device: string): ParityReport => {
  const d = utf8(device)
  return JSON.parse(lib.readString("bm_parity_check", (b, c, l) => lib.sym.bm_parity_check(ptrOf(d), d.byteLength, b, c, l))) as ParityReport
}
const PARITY_OPS = ["adamw", "masked_xent", "rms_norm", "rope", "softmax", "swiglu"]

describe("fused-op parity harness", () => {
  test("on the CPU: f32 fused ops against a plain TypeScript implementation; bf16 op chains within the bf16 tolerance of the f32 ops", () => {
    const lib = loadNativeSync("cpu")
    // f32: the fused CPU ops against an independent implementation (bm_parity_check cannot do
    // this on the CPU: there its f32 reference is the same fused CPU code).
    const plain = againstPlainReference(lib)
    expect(plain.length).toBe(6)
    for (const r of plain) expect(r.err, r.what).toBeLessThanOrEqual(r.tol)
    const r = parityCheck(lib, "cpu")
    expect(r.cuda_kernels).toBe(false)
    const bad = r.rows.filter((x) => !x.ok)
    expect(bad).toEqual([])
    expect(r.ok).toBe(true)
    const ops = new Set(r.rows.map((x) => x.op.replace(/\[.*\]/, "")))
    expect([...ops].sort()).toEqual(PARITY_OPS)
    for (const x of r.rows) expect(x.tol).toBe(x.dtype === "bf16" ? 2e-2 : 1e-4)
    // The harness's f32 rows on the CPU compare the fused CPU code with itself: exactly 0, which
    // only shows the harness runs (the independent f32 check is the one above).
    for (const x of r.rows.filter((x) => x.dtype === "f32" && x.op !== "adamw")) expect(x.rel_err).toBe(0)
    // The bf16 side is a genuinely different computation (bf16 op chains), not a copy.
    expect(r.rows.filter((x) => x.dtype === "bf16").some((x) => x.rel_err > 0)).toBe(true)
  })

  // Not run on the build machine (no GPU): written from the harness's code, unverified until
  // `bun test tests/cuda-device.test.ts` runs where the CUDA build loads and a GPU answers.
  test("on a GPU: the CUDA kernels against the CPU f32 reference (f32 and bf16) and against a plain TypeScript implementation", () => {
    let lib: NativeLib
    try {
      if (!existsSync(libraryPath("cuda")) || !hasDriver) throw new Error(existsSync(libraryPath("cuda")) ? "no NVIDIA driver" : `no CUDA build at ${libraryPath("cuda")}`)
      lib = loadNativeSync("cuda:0")
    } catch (e) {
      console.warn(`skipped: ${(e as Error).message}`)
      return
    }
    const r = parityCheck(lib, "cuda:0")
    expect(r.device).toMatch(/^cuda/)
    expect(r.cuda_kernels).toBe(true)
    expect(r.rows.filter((x) => !x.ok)).toEqual([])
    expect(r.ok).toBe(true)
    expect([...new Set(r.rows.map((x) => x.op.replace(/\[.*\]/, "")))].sort()).toEqual(PARITY_OPS)
    for (const dtype of ["f32", "bf16"]) expect(r.rows.some((x) => x.dtype === dtype), dtype).toBe(true)
    for (const x of r.rows) expect(x.tol).toBe(x.dtype === "bf16" ? 2e-2 : 1e-4)
    // Here the reference side is the CPU and the tested side the GPU kernels: different code and
    // summation orders, so an all-zero f32 column would mean the harness compared a side with itself.
    expect(r.rows.filter((x) => x.dtype === "f32" && x.op !== "adamw").some((x) => x.rel_err > 0)).toBe(true)
    // The same ops on the GPU against plain loops: no engine code on the reference side.
    for (const p of againstPlainReference(lib)) expect(p.err, p.what).toBeLessThanOrEqual(p.tol)
  })
})
