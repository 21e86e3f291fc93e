/**
 * The toolchain of the CUDA build (`bun scripts/build-native.ts --cuda`), made ready on a machine
 * without a GPU or a CUDA install. Used only when the CUDA build is asked for: the CPU build, the
 * demo and the tests never call it.
 *
 * 1. nvcc 13.0: `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else the pinned PyPI wheels installed into
 *    `.cuda/toolchain` with `pip install --target` (nvcc, cudart headers + libcudart.so.13, crt
 *    headers, CCCL, NVVM/cicc: ~270 MB on disk, never into the system Python).
 * 2. Link stubs: candle's cudarc links dynamically (`-lcuda -lnvrtc -lcurand -lcublas -lcublasLt`,
 *    and `-lnccl` for the engine's `nccl` feature) and candle-kernels adds `-lcudart`. The wheels
 *    hold no `libcuda.so` (a driver library), cuBLAS is a 420 MB wheel and NCCL another large one,
 *    so `.cuda/stubs/lib/stubs/` gets small stub libraries with the real sonames (libcuda.so.1,
 *    libnvrtc.so.13, libcurand.so.10, libcublas.so.13, libcublasLt.so.13, libnccl.so.2)
 *    exporting every function cudarc declares (read from cudarc's sources), and
 *    `libcudart.so` → the wheel's real `libcudart.so.13`. At run time the GPU machine's driver and
 *    CUDA libraries resolve those names (see `src/native/library.ts` for how they are found;
 *    libnccl.so.2 comes from PyTorch's nvidia-nccl-cu13 wheel, in `nvidia/nccl/lib`).
 * 3. The environment for cargo: NVCC, PATH, CUDA_HOME (toolkit) + CUDA_ROOT (stubs), both searched
 *    by cudarc's build script, CUDA_COMPUTE_CAP=90 (H100/H200; candle-kernels makes it sm_90a) and
 *    CUDARC_CUDA_VERSION=13000 (no nvidia-smi or driver needed at build time).
 *
 *   bun scripts/cuda-toolchain.ts         # prepare and print the environment (for a manual cargo)
 */
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { dirname, join, resolve } from "node:path"

/** The pinned wheels: 13.0 because the GPU machines' driver is CUDA 13.0 (newer PTX fails there). */
export const CUDA_WHEELS = [
  "nvidia-cuda-nvcc==13.0.*",
  "nvidia-cuda-runtime==13.0.*",
  "nvidia-cuda-crt==13.0.*",
  "nvidia-cuda-cccl==13.0.*",
  "nvidia-nvvm==13.0.*",
] as const

export const CUDA_RELEASE = "13.0"

/** Stub libraries: file name, soname, cudarc module whose `sys` bindings list the functions. */
const STUBS = [
  { file: "libcuda.so", soname: "libcuda.so.1", module: "driver" },
  { file: "libnvrtc.so", soname: "libnvrtc.so.13", module: "nvrtc" },
  { file: "libcurand.so", soname: "libcurand.so.10", module: "curand" },
  { file: "libcublas.so", soname: "libcublas.so.13", module: "cublas" },
  { file: "libcublasLt.so", soname: "libcublasLt.so.13", module: "cublaslt" },
  { file: "libnccl.so", soname: "libnccl.so.2", module: "nccl" },
] as const

const log = (msg: string) => console.error(`[cuda-toolchain] ${msg}`)

function run(cmd: string[], what: string, cwd?: string): string {
  const p = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe", env: process.env })
  if (p.exitCode !== 0) {
    throw new Error(`${what} failed (${cmd.join(" ")}, exit ${p.exitCode}):\n${p.stderr.toString().slice(-4000)}`)
  }
  return p.stdout.toString()
}

/** `release 13.0` from `nvcc --version`, or null. */
export function nvccRelease(nvcc: string): string | null {
  const p = Bun.spawnSync([nvcc, "--version"], { stdout: "pipe", stderr: "pipe" })
  if (p.exitCode !== 0) return null
  return /release (\d+\.\d+)/.exec(p.stdout.toString())?.[1] ?? null
}

/** Finds or installs nvcc 13.0; returns (nvcc, toolkit root). */
function ensureNvcc(root: string): { nvcc: string; home: string; source: string } {
  const given = process.env.NVCC ?? (process.env.CUDA_HOME ? join(process.env.CUDA_HOME, "bin", "nvcc") : undefined)
  if (given && existsSync(given)) {
    const rel = nvccRelease(given)
    if (rel !== CUDA_RELEASE) {
      log(`warning: ${given} is CUDA ${rel ?? "?"}, the GPU machines run a CUDA ${CUDA_RELEASE} driver; PTX from a newer nvcc fails to load there`)
    }
    return { nvcc: given, home: resolve(dirname(given), ".."), source: given }
  }
  const target = join(root, ".cuda", "toolchain")
  const home = join(target, "nvidia", "cu13")
  const nvcc = join(home, "bin", "nvcc")
  if (existsSync(nvcc) && nvccRelease(nvcc) === CUDA_RELEASE && existsSync(join(home, "include", "cuda_runtime.h"))) {
    return { nvcc, home, source: `${target} (pinned wheels, already installed)` }
  }
  const py = Bun.which("python3") ?? Bun.which("python")
  if (!py) throw new Error("the CUDA build needs nvcc: set NVCC or CUDA_HOME, or install python3 + pip for the pinned nvcc wheels")
  log(`installing ${CUDA_WHEELS.join(" ")} into ${target} (pip --target)`)
  rmSync(target, { recursive: true, force: true })
  mkdirSync(target, { recursive: true })
  run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target", target, ...CUDA_WHEELS], "pip install of the nvcc wheels")
  const rel = existsSync(nvcc) ? nvccRelease(nvcc) : null
  if (rel !== CUDA_RELEASE) throw new Error(`after pip install, ${nvcc} reports CUDA ${rel ?? "nothing"} (expected ${CUDA_RELEASE})`)
  return { nvcc, home, source: `${target} (pinned wheels)` }
}

/** cudarc's source directory, from `cargo metadata` (works for registry and vendored sources). */
function cudarcDir(root: string): string {
  const out = run(
    ["cargo", "metadata", "--format-version", "1", "--features", "bunmind-ffi/cuda"],
    "cargo metadata",
    join(root, "core-rs"),
  )
  const pkgs = (JSON.parse(out) as { packages: { name: string; manifest_path: string }[] }).packages
  const p = pkgs.find((x) => x.name === "cudarc")
  if (!p) throw new Error("cargo metadata lists no cudarc package: is the `cuda` feature of bunmind-ffi wired to candle's?")
  return dirname(p.manifest_path)
}

/** Names of the C functions cudarc declares for one library (its bindgen'd `sys` module). */
export function cudarcFunctions(cudarc: string, module: string): string[] {
  const src = readFileSync(join(cudarc, "src", module, "sys", "mod.rs"), "utf8")
  const names = new Set<string>()
  for (const m of src.matchAll(/pub unsafe fn ([A-Za-z_][A-Za-z0-9_]*)\s*\(/g)) names.add(m[1]!)
  return [...names].sort()
}

/** Writes the stub libraries (rebuilt when cudarc's version or this script's list changes). */
function ensureStubs(root: string, home: string): string {
  const stubRoot = join(root, ".cuda", "stubs")
  const dir = join(stubRoot, "lib", "stubs")
  const cudarc = cudarcDir(root)
  const stamp = JSON.stringify({ cudarc, stubs: STUBS, home })
  const stampFile = join(stubRoot, "stamp.json")
  if (existsSync(stampFile) && readFileSync(stampFile, "utf8") === stamp) return stubRoot
  rmSync(stubRoot, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const cc = process.env.CC ?? "cc"
  for (const s of STUBS) {
    const fns = cudarcFunctions(cudarc, s.module)
    if (fns.length === 0) throw new Error(`no functions found in ${cudarc}/src/${s.module}/sys/mod.rs`)
    const c = join(dir, `${s.file}.c`)
    writeFileSync(
      c,
      `/* Link-time stub for ${s.soname} (generated by scripts/cuda-toolchain.ts from cudarc's bindings).\n` +
        ` * Never loaded: at run time the real ${s.soname} resolves these names. */\n` +
        fns.map((f) => `void ${f}(void) {}\n`).join(""),
    )
    run([cc, "-shared", "-fPIC", "-O0", `-Wl,-soname,${s.soname}`, "-o", join(dir, s.file), c], `stub ${s.file}`)
    rmSync(c)
  }
  // candle-kernels' MoE objects need the CUDA runtime: link the real one when it is there.
  for (const cand of [join(home, "lib", "libcudart.so.13"), join(home, "lib64", "libcudart.so.13"), join(home, "lib64", "libcudart.so")]) {
    if (existsSync(cand)) {
      symlinkSync(cand, join(dir, "libcudart.so"))
      break
    }
  }
  if (!existsSync(join(dir, "libcudart.so"))) throw new Error(`no libcudart.so.13 under ${home}/lib or lib64`)
  writeFileSync(stampFile, stamp)
  return stubRoot
}

/** Makes the toolchain ready and returns the environment additions for `cargo build --features cuda`. */
export function cudaBuildEnv(root: string): Record<string, string> {
  const { nvcc, home, source } = ensureNvcc(root)
  const stubs = ensureStubs(root, home)
  log(`nvcc ${nvccRelease(nvcc)} from ${source}; link stubs in ${join(stubs, "lib", "stubs")}`)
  return {
    NVCC: nvcc,
    PATH: `${dirname(nvcc)}:${process.env.PATH ?? ""}`,
    CUDA_HOME: home,
    CUDA_ROOT: stubs,
    CUDA_COMPUTE_CAP: process.env.CUDA_COMPUTE_CAP ?? "90",
    CUDARC_CUDA_VERSION: process.env.CUDARC_CUDA_VERSION ?? "13000",
  }
}

if (import.meta.main) {
  const env = cudaBuildEnv(resolve(import.meta.dir, ".."))
  for (const [k, v] of Object.entries(env)) console.log(`export ${k}=${JSON.stringify(v)}`)
}
