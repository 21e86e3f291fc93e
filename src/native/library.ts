/**
 * Loads the native library (the `core-rs/ffi` cdylib) with bun:ffi, checks its ABI version, and
 * gives typed helpers for the calling conventions of the C ABI: status codes with a last-error
 * message, caller-owned output buffers that grow on `BUFFER_TOO_SMALL`.
 *
 * The library is a lazily loaded, process-wide value, not an Effect service: `loadNativeSync(kind)`
 * dlopens each build (CPU, CUDA) the first time something asks for it and returns the same object
 * afterwards; callers (tokenizer, model, trainer, export, serve worker) call it where they open a
 * handle. That is enough because the C ABI is synchronous and holds no per-caller state: there is
 * nothing to configure per program and nothing to release (a dlopened library lives as long as the
 * process). What does need a lifetime — the handles (tokenizer, model, trainer, session) — is owned
 * through `Effect.acquireRelease` by the modules that open them. Which file is loaded comes from
 * `--device` and the `BUNMIND_LIB` / `BUNMIND_CUDA_LIB` overrides (`src/util/env.ts`).
 */
import { dlopen, ptr, suffix, type Library, type Pointer } from "bun:ffi"
import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
import { cudaLibPath, libraryOverride } from "../util/env.ts"
import { NativeError, NativeLoadError } from "./errors.ts"
import { ABI_VERSION, Status, statusName, symbols } from "./symbols.ts"

/** Which library file: the CPU build or the CUDA build. */
export type DeviceKind = "cpu" | "cuda"
/** A device name as the CLI takes it (`--device`): `cpu`, `cuda` (= `cuda:0`) or `cuda:N`. */
export type Device = DeviceKind | `cuda:${number}`
export type Symbols = Library<typeof symbols>["symbols"]

export const repoRoot = resolve(import.meta.dir, "..", "..")

export const deviceKind = (d: Device): DeviceKind => (d === "cpu" ? "cpu" : "cuda")

/** Parses a device name; null when it is not `cpu`, `cuda` or `cuda:N`. */
export const parseDeviceName = (d: string): Device | null =>
  d === "cpu" || d === "cuda" ? d : /^cuda:\d+$/.test(d) ? (`cuda:${Number(d.slice(5))}` as Device) : null

/** Where `scripts/build-native.ts` puts the built libraries: one file per device kind. */
export const libraryPath = (device: Device): string => {
  const kind = deviceKind(device)
  return libraryOverride(kind) ?? join(repoRoot, "dist", "native", `libbunmind-${kind}.${suffix}`)
}

/** What running the CUDA build needs, appended to CUDA load errors. */
const CUDA_RUN = "It runs on an NVIDIA GPU with a CUDA 13.0+ driver; elsewhere run with --device cpu."
/** How to get the CUDA build. */
const CUDA_BUILD = "Build it with `bun scripts/build-native.ts --cuda` (no GPU needed to build)."

/**
 * The CUDA libraries the CUDA build links against (besides the driver's libcuda.so.1), each with
 * one symbol to dlopen it by. When the dynamic loader does not find them (they often live in a
 * Python environment's `nvidia/cu13/lib`, e.g. PyTorch's, and NCCL in its `nvidia/nccl/lib`),
 * they are loaded by full path first; a library already loaded under its soname satisfies the
 * CUDA build's dependency.
 */
const CUDA_DEPS = [
  { soname: "libcudart.so.13", symbol: "cudaGetDeviceCount" },
  { soname: "libcublasLt.so.13", symbol: "cublasLtCreate" },
  { soname: "libcublas.so.13", symbol: "cublasCreate_v2" },
  { soname: "libnvrtc.so.13", symbol: "nvrtcVersion" },
  { soname: "libcurand.so.10", symbol: "curandCreateGenerator" },
  { soname: "libnccl.so.2", symbol: "ncclGetVersion" },
] as const

/** Directories that may hold the CUDA 13 libraries: `$BUNMIND_CUDA_LIB_PATH`, `$CUDA_HOME`, the
 *  usual toolkit paths, and the `nvidia/cu13/lib` and `nvidia/nccl/lib` of the Python installs on
 *  PATH. */
function cudaLibDirs(): string[] {
  const dirs: string[] = []
  dirs.push(...cudaLibPath())
  for (const home of [process.env.CUDA_HOME, process.env.CUDA_PATH, "/usr/local/cuda"]) {
    if (home) dirs.push(join(home, "lib64"), join(home, "lib"))
  }
  for (const py of ["python3", "python"]) {
    const exe = Bun.which(py)
    if (!exe) continue
    const p = Bun.spawnSync([exe, "-c", "import site,sys;print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]))"], { stdout: "pipe", stderr: "ignore" })
    if (p.exitCode === 0) for (const sp of p.stdout.toString().split("\n")) if (sp.trim()) dirs.push(join(sp.trim(), "nvidia", "cu13", "lib"), join(sp.trim(), "nvidia", "nccl", "lib"))
    break
  }
  return [...new Set(dirs)].filter((d) => existsSync(d))
}

const preloaded: Library<Record<string, { args: []; returns: "i32" }>>[] = []

/** Loads each missing CUDA dependency from the first directory that has it; returns what was loaded. */
function preloadCudaDeps(): string[] {
  const loaded: string[] = []
  const dirs = cudaLibDirs()
  for (const dep of CUDA_DEPS) {
    for (const d of dirs) {
      const file = join(d, dep.soname)
      if (!existsSync(file)) continue
      try {
        preloaded.push(dlopen(file, { [dep.symbol]: { args: [], returns: "i32" } }) as never)
        loaded.push(file)
        break
      } catch {
        // try the next directory
      }
    }
  }
  return loaded
}

/** A user-facing explanation of a failed dlopen of the CUDA build. */
function cudaLoadMessage(path: string, err: string): string {
  if (/libcuda\.so/.test(err)) {
    return `no NVIDIA driver on this machine (libcuda.so.1 not found), so the CUDA build at ${path} cannot run. ${CUDA_RUN}`
  }
  const lib = /(lib[\w.+-]+\.so[\d.]*)/.exec(err)?.[1]
  if (lib && /^libnccl\.so/.test(lib)) {
    return (
      `the CUDA build at ${path} needs ${lib} (NCCL 2, for multi-GPU training; the build links it even for one GPU), ` +
      "which was not found: install the nvidia-nccl-cu13 wheel (PyTorch cu130 ships it, in nvidia/nccl/lib) or NCCL 2 for CUDA 13, " +
      "or point BUNMIND_CUDA_LIB_PATH (or LD_LIBRARY_PATH) at it. " +
      CUDA_RUN
    )
  }
  if (lib && CUDA_DEPS.some((d) => d.soname === lib || lib.startsWith(d.soname.split(".so")[0]!))) {
    return (
      `the CUDA build at ${path} needs ${lib} (CUDA 13 runtime libraries: cuBLAS, cuBLASLt, NVRTC, cuRAND, cudart), ` +
      "which were not found: install the CUDA 13 toolkit or the nvidia-cublas / nvidia-cuda-nvrtc / nvidia-curand / " +
      "nvidia-cuda-runtime wheels for CUDA 13 (PyTorch cu130 ships them), or point BUNMIND_CUDA_LIB_PATH (or LD_LIBRARY_PATH) at them. " +
      CUDA_RUN
    )
  }
  return `could not load the CUDA build at ${path}: ${err}. ${CUDA_BUILD} ${CUDA_RUN}`
}

export interface NativeLib {
  /** The library file's kind (`cpu` or `cuda`). */
  readonly device: DeviceKind
  readonly path: string
  readonly sym: Symbols
  /** Throws `NativeError` (with the library's message) unless `code` is OK. */
  check(fn: string, code: number): void
  /** Calls `call(buf, cap, lenOut)` until the output fits, then returns the bytes. */
  readBytes(fn: string, call: (buf: Pointer, cap: number, lenOut: Pointer) => number, hint?: number): Uint8Array
  readString(fn: string, call: (buf: Pointer, cap: number, lenOut: Pointer) => number, hint?: number): string
  lastError(): string
  buildInfo(): { version: string; abi: number; cuda: boolean; cuda_kernels?: boolean; threads: number }
  liveHandles(): number
  /** Opens `device` in the library (checked once per name); throws `NativeLoadError` saying what is missing. */
  openDevice(device: Device): DeviceInfo
}

export interface DeviceInfo {
  device: string
  cuda_build: boolean
  gpus: { ordinal: number; name: string; compute_capability: string; memory_bytes: number }[]
}

const encoder = new TextEncoder()
// ignoreBOM: a leading U+FEFF is text, not a marker to strip.
const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true })

/** UTF-8 bytes of `s` plus a pointer usable for the duration of a call (never null). */
export const utf8 = (s: string): Uint8Array => encoder.encode(s)
export const EMPTY = new Uint8Array(8)
export const ptrOf = (a: ArrayBufferView): Pointer => ptr(a.byteLength === 0 ? EMPTY : a)

const cache = new Map<DeviceKind, NativeLib>()

/**
 * The library for `device`'s kind (loaded once per process), with `device` opened in it: for
 * `cuda[:N]` this checks the driver and the GPU, so a missing one fails here with a clear message.
 */
export function loadNativeSync(device: Device = "cpu"): NativeLib {
  const lib = loadLibrarySync(deviceKind(device))
  if (device !== "cpu") lib.openDevice(device)
  return lib
}

function loadLibrarySync(device: DeviceKind): NativeLib {
  const hit = cache.get(device)
  if (hit) return hit
  const path = libraryPath(device)
  if (!existsSync(path)) {
    throw new NativeLoadError({
      device,
      path,
      message:
        device === "cuda"
          ? `--device cuda needs the CUDA build of bunmind's native library, which is not at ${path}. ${CUDA_BUILD} ${CUDA_RUN}`
          : `bunmind's native library is not at ${path}. Build it with \`bun run build:native\` (needs cargo).`,
    })
  }
  let lib: Library<typeof symbols>
  try {
    lib = dlopen(path, symbols)
  } catch (e) {
    let err = (e as Error).message
    let opened: Library<typeof symbols> | undefined
    // The CUDA libraries may be installed where the dynamic loader does not look: load them by path, retry.
    if (device === "cuda" && !/libcuda\.so/.test(err) && preloadCudaDeps().length > 0) {
      try {
        opened = dlopen(path, symbols)
      } catch (e2) {
        err = (e2 as Error).message
      }
    }
    if (!opened) {
      throw new NativeLoadError({
        device,
        path,
        message: device === "cuda" ? cudaLoadMessage(path, err) : `could not load ${path}: ${err}. Rebuild with \`bun run build:native\`.`,
      })
    }
    lib = opened
  }
  const sym = lib.symbols
  const abi = sym.bm_abi_version()
  if (abi !== ABI_VERSION) {
    lib.close()
    throw new NativeLoadError({
      device,
      path,
      message: `${path} speaks ABI ${abi} but this bunmind expects ABI ${ABI_VERSION}: rebuild it with \`bun run build:native\`.`,
    })
  }
  const errBuf = new Uint8Array(4096)
  const lenBox = new Uint32Array(1)
  const lastError = (): string => {
    const n = Number(sym.bm_last_error(ptr(errBuf), errBuf.byteLength))
    if (n <= errBuf.byteLength) return decoder.decode(errBuf.subarray(0, n))
    const big = new Uint8Array(n)
    sym.bm_last_error(ptr(big), n)
    return decoder.decode(big)
  }
  const check = (fn: string, code: number) => {
    if (code !== Status.OK) throw new NativeError({ fn, code, status: statusName(code), message: lastError() })
  }
  let scratch = new Uint8Array(1 << 16)
  const readBytes: NativeLib["readBytes"] = (fn, call, hint) => {
    if (hint && hint > scratch.byteLength) scratch = new Uint8Array(hint)
    for (let attempt = 0; attempt < 3; attempt++) {
      const code = call(ptr(scratch), scratch.byteLength, ptr(lenBox))
      if (code === Status.BUFFER_TOO_SMALL) {
        scratch = new Uint8Array(Math.max(lenBox[0]!, scratch.byteLength * 2))
        continue
      }
      check(fn, code)
      return scratch.slice(0, lenBox[0]!)
    }
    throw new NativeError({ fn, code: Status.BUFFER_TOO_SMALL, status: "buffer_too_small", message: "output kept growing" })
  }
  const opened = new Map<string, DeviceInfo>()
  const native: NativeLib = {
    device,
    path,
    sym,
    check,
    readBytes,
    readString: (fn, call, hint) => decoder.decode(readBytes(fn, call, hint)),
    lastError,
    buildInfo: () => JSON.parse(decoder.decode(readBytes("bm_build_info", (b, c, l) => sym.bm_build_info(b, c, l)))),
    liveHandles: () => sym.bm_live_handles(),
    openDevice: (dev) => {
      const hit = opened.get(dev)
      if (hit) return hit
      const d = utf8(dev)
      let info: DeviceInfo
      try {
        info = JSON.parse(decoder.decode(readBytes("bm_device_info", (b, c, l) => sym.bm_device_info(ptrOf(d), d.byteLength, b, c, l))))
      } catch (e) {
        // The engine's message says what is missing (no driver, no such GPU, CPU build).
        throw new NativeLoadError({ device: dev, path, message: (e as Error).message })
      }
      opened.set(dev, info)
      return info
    },
  }
  cache.set(device, native)
  return native
}
