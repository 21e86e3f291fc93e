/**
 * Loads the native library (the `core-rs/ffi` cdylib) with bun:ffi, checks its ABI version, and
 * gives typed helpers for the calling conventions of the C ABI: status codes with a last-error
 * message, caller-owned output buffers that grow on `BUFFER_TOO_SMALL`.
 */
import { dlopen, ptr, suffix, type Library, type Pointer } from "bun:ffi"
import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
import { Context, Effect, Layer } from "effect"
import { NativeError, NativeLoadError } from "./errors.ts"
import { ABI_VERSION, Status, statusName, symbols } from "./symbols.ts"

export type Device = "cpu" | "cuda"
export type Symbols = Library<typeof symbols>["symbols"]

export const repoRoot = resolve(import.meta.dir, "..", "..")

/** Where `scripts/build-native.ts` puts the built libraries: one file per device. */
export const libraryPath = (device: Device): string =>
  process.env[device === "cpu" ? "BUNMIND_LIB" : "BUNMIND_CUDA_LIB"] ??
  join(repoRoot, "dist", "native", `libbunmind-${device}.${suffix}`)

export interface NativeLib {
  readonly device: Device
  readonly path: string
  readonly sym: Symbols
  /** Throws `NativeError` (with the library's message) unless `code` is OK. */
  check(fn: string, code: number): void
  /** Calls `call(buf, cap, lenOut)` until the output fits, then returns the bytes. */
  readBytes(fn: string, call: (buf: Pointer, cap: number, lenOut: Pointer) => number, hint?: number): Uint8Array
  readString(fn: string, call: (buf: Pointer, cap: number, lenOut: Pointer) => number, hint?: number): string
  lastError(): string
  buildInfo(): { version: string; abi: number; cuda: boolean; threads: number }
  liveHandles(): number
}

const encoder = new TextEncoder()
// ignoreBOM: a leading U+FEFF is text, not a marker to strip.
const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true })

/** UTF-8 bytes of `s` plus a pointer usable for the duration of a call (never null). */
export const utf8 = (s: string): Uint8Array => encoder.encode(s)
export const EMPTY = new Uint8Array(8)
export const ptrOf = (a: ArrayBufferView): Pointer => ptr(a.byteLength === 0 ? EMPTY : a)

const cache = new Map<Device, NativeLib>()

export function loadNativeSync(device: Device = "cpu"): NativeLib {
  const hit = cache.get(device)
  if (hit) return hit
  const path = libraryPath(device)
  if (!existsSync(path)) {
    throw new NativeLoadError({
      device,
      path,
      message:
        device === "cuda"
          ? `the CUDA build of bunmind's native library is not at ${path}. Build it on a machine with nvcc (` +
            "`bun run build:native --cuda`) or run with --device cpu."
          : `bunmind's native library is not at ${path}. Build it with \`bun run build:native\` (needs cargo).`,
    })
  }
  let lib: Library<typeof symbols>
  try {
    lib = dlopen(path, symbols)
  } catch (e) {
    throw new NativeLoadError({
      device,
      path,
      message: `could not load ${path}: ${(e as Error).message}. ` +
        (device === "cuda" ? "Is a CUDA 13 driver installed? Use --device cpu otherwise." : "Rebuild with `bun run build:native`."),
    })
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
  }
  cache.set(device, native)
  return native
}

/** The native library as an Effect service; provided once at the edge of a program. */
export class Native extends Context.Service<Native, NativeLib>()("bunmind/Native") {
  static layer = (device: Device = "cpu") =>
    Layer.effect(Native, Effect.try({ try: () => loadNativeSync(device), catch: (e) => e as NativeLoadError }))
}
