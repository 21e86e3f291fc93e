#!/usr/bin/env bun
/**
 * Builds the native library (core-rs/ffi) in release mode and installs it as
 * dist/native/libbunmind-<device>.<ext>, where the loader looks for it.
 *   bun scripts/build-native.ts          # CPU build
 *   bun scripts/build-native.ts --cuda   # CUDA build: prepares nvcc 13.0 + link stubs first
 *                                         # (scripts/cuda-toolchain.ts; no GPU needed to build)
 * The CUDA build goes to its own target directory (`$CARGO_TARGET_DIR/cuda-build`): both builds
 * write `release/libbunmind.so`, and neither should overwrite the other's.
 */
import { copyFileSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { suffix } from "bun:ffi"
import { cudaBuildEnv } from "./cuda-toolchain.ts"

const root = resolve(import.meta.dir, "..")
const cuda = process.argv.includes("--cuda")
const device = cuda ? "cuda" : "cpu"
const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, "core-rs", "target")
const args = ["build", "--release", "-p", "bunmind-ffi", ...(cuda ? ["--features", "cuda"] : [])]
if (cuda) {
  process.env.CARGO_TARGET_DIR = join(targetDir, "cuda-build")
  try {
    Object.assign(process.env, cudaBuildEnv(root))
  } catch (e) {
    console.error(`[build-native] the CUDA toolchain is not ready: ${(e as Error).message}`)
    process.exit(1)
  }
}
const started = performance.now()
console.error(`[build-native] cargo ${args.join(" ")} (${device})`)
const proc = Bun.spawnSync(["cargo", ...args], {
  cwd: join(root, "core-rs"),
  stdio: ["inherit", "inherit", "inherit"],
  env: process.env,
})
if (proc.exitCode !== 0) {
  console.error(`[build-native] cargo failed with exit code ${proc.exitCode}`)
  process.exit(proc.exitCode ?? 1)
}
const built = join(process.env.CARGO_TARGET_DIR ?? targetDir, "release", `libbunmind.${suffix}`)
const outDir = join(root, "dist", "native")
mkdirSync(outDir, { recursive: true })
const dest = join(outDir, `libbunmind-${device}.${suffix}`)
// Copy then rename: a running process that has the old file mapped keeps working.
copyFileSync(built, `${dest}.tmp`)
renameSync(`${dest}.tmp`, dest)
console.error(`[build-native] installed ${dest} (${((performance.now() - started) / 1000).toFixed(0)} s)`)
if (cuda) {
  // A gzip copy to carry to a GPU machine (~15 MB instead of ~60 MB); bench/gpu/run.sh unpacks it.
  const gz = Bun.gzipSync(readFileSync(dest), { level: 6 })
  writeFileSync(`${dest}.gz.tmp`, gz)
  renameSync(`${dest}.gz.tmp`, `${dest}.gz`)
  console.error(`[build-native] packed ${dest}.gz (${(gz.byteLength / 2 ** 20).toFixed(1)} MiB) for carrying to a GPU machine`)
}
