#!/usr/bin/env bun
/**
 * Builds the browser/edge core (core-rs/wasm) and lays it out as wasm-pack does:
 *   dist/wasm/pkg/          SIMD128 build: bunmind_wasm_bg.wasm, bunmind_wasm.js (ES module glue), .d.ts, package.json
 *   dist/wasm/pkg-nosimd/   the same without SIMD (fallback for old browsers, and the bench's comparison)
 *
 *   bun scripts/build-wasm.ts [--simd-only] [--browser]
 *
 * Installs what is missing, in this order:
 * 1. the wasm32 target: `rustup target add wasm32-unknown-unknown`; where rustup cannot download it, Debian's
 *    rustc 1.96 with its std sources (`apt-get install rustc-web cargo-web rust-web-src lld-16`) and `-Zbuild-std`;
 * 2. wasm-bindgen-cli at exactly the version of the wasm-bindgen crate in core-rs/wasm/Cargo.lock (`cargo install`).
 * `--browser` also installs Debian's chromium and a CJK font (for tests/edge.test.ts and bench/edge.ts) when missing.
 *
 * Environment: BUNMIND_WASM_TARGET_DIR (default core-rs/wasm/target) holds the cargo build; the SIMD and no-SIMD
 * builds use separate subfolders so switching RUSTFLAGS never rebuilds the other. BUNMIND_WASM_TOOLCHAIN=debian
 * forces the Debian build-std route; BUNMIND_WASM_DIST (default dist/wasm) moves the output.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"

const root = resolve(import.meta.dir, "..")
const crate = join(root, "core-rs/wasm")
const dist = resolve(process.env.BUNMIND_WASM_DIST ?? join(root, "dist/wasm"))
const targetDir = process.env.BUNMIND_WASM_TARGET_DIR ?? join(crate, "target")
const TARGET = "wasm32-unknown-unknown"
const args = process.argv.slice(2)
const log = (msg: string) => console.error(`[build-wasm] ${msg}`)

function run(cmd: string[], what: string, env: Record<string, string | undefined> = {}, cwd = root): void {
  log(`${what}: ${cmd.join(" ")}`)
  const p = Bun.spawnSync(cmd, { cwd, stdio: ["inherit", "inherit", "inherit"], env: { ...process.env, ...env } })
  if (p.exitCode !== 0) {
    log(`${what} failed (exit ${p.exitCode})`)
    process.exit(p.exitCode ?? 1)
  }
}

function ok(cmd: string[], env: Record<string, string | undefined> = {}): { ok: boolean; out: string } {
  try {
    const p = Bun.spawnSync(cmd, { cwd: root, env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" })
    return { ok: p.exitCode === 0, out: p.stdout.toString() + p.stderr.toString() }
  } catch {
    return { ok: false, out: "" }
  }
}

const isRoot = process.getuid?.() === 0

function aptInstall(pkgs: string[], why: string): void {
  if (!Bun.which("apt-get")) {
    log(`cannot install ${pkgs.join(" ")} (${why}): no apt-get here; install them with your package manager`)
    process.exit(1)
  }
  const sudo = isRoot ? [] : Bun.which("sudo") ? ["sudo"] : null
  if (sudo === null) {
    log(`${why}: run as root: apt-get install -y ${pkgs.join(" ")}`)
    process.exit(1)
  }
  run([...sudo, "apt-get", "update", "-qq"], "apt-get update", { DEBIAN_FRONTEND: "noninteractive" })
  run([...sudo, "apt-get", "install", "-y", "-qq", ...pkgs], `installing ${pkgs.join(" ")} (${why})`, { DEBIAN_FRONTEND: "noninteractive" })
}

/** How cargo is invoked for wasm32: rustup's std, or Debian's rustc building std from source. */
interface Toolchain {
  kind: "rustup" | "debian-build-std"
  cargo: string
  extraArgs: string[]
  env: Record<string, string>
}

function toolchain(): Toolchain {
  if (Bun.which("rustup") && process.env.BUNMIND_WASM_TOOLCHAIN !== "debian") {
    const installed = ok(["rustup", "target", "list", "--installed"])
    if (installed.ok && installed.out.includes(TARGET)) return { kind: "rustup", cargo: "cargo", extraArgs: [], env: {} }
    log(`adding the ${TARGET} target with rustup`)
    if (ok(["timeout", "600", "rustup", "target", "add", TARGET]).ok) return { kind: "rustup", cargo: "cargo", extraArgs: [], env: {} }
    log(`rustup could not add ${TARGET} (no download access?); falling back to Debian's rustc with std sources`)
  }
  const debian = "/usr/bin/rustc"
  const haveDebian = existsSync(debian) && existsSync("/usr/bin/cargo") && existsSync("/usr/bin/wasm-ld-16") && ok(["sh", "-c", "ls -d /usr/src/rustc-*/library"]).ok
  if (!haveDebian) aptInstall(["rustc-web", "cargo-web", "rust-web-src", "lld-16"], "Rust for wasm32 with std sources")
  return {
    kind: "debian-build-std",
    cargo: "/usr/bin/cargo",
    extraArgs: ["-Zbuild-std=std,panic_abort"],
    env: { RUSTC: debian, RUSTC_BOOTSTRAP: "1", CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER: "/usr/bin/wasm-ld-16" },
  }
}

function lockedVersion(name: string): string {
  const lock = readFileSync(join(crate, "Cargo.lock"), "utf8")
  const m = new RegExp(`name = "${name}"\\nversion = "([^"]+)"`).exec(lock)
  if (!m) throw new Error(`core-rs/wasm/Cargo.lock has no ${name}`)
  return m[1]!
}

function wasmBindgen(version: string): string {
  const candidates = [Bun.which("wasm-bindgen"), join(process.env.HOME ?? "", ".cargo/bin/wasm-bindgen")].filter((p): p is string => !!p && existsSync(p))
  for (const c of candidates) {
    const v = ok([c, "--version"])
    if (v.ok && v.out.trim().endsWith(version)) return c
  }
  log(`installing wasm-bindgen-cli ${version} (must equal the wasm-bindgen crate's version)`)
  // --locked first (reproducible); a registry mirror lagging behind the lockfile's versions needs the fallback.
  const base = ["cargo", "install", "--version", version, "wasm-bindgen-cli"]
  if (!ok([...base, "--locked"]).ok) run(base, "cargo install wasm-bindgen-cli")
  const bin = join(process.env.HOME ?? "", ".cargo/bin/wasm-bindgen")
  if (!existsSync(bin)) {
    log("wasm-bindgen was installed but is not in ~/.cargo/bin")
    process.exit(1)
  }
  return bin
}

function build(tc: Toolchain, simd: boolean): string {
  const sub = join(targetDir, simd ? "simd" : "nosimd")
  const flags = simd ? "-C target-feature=+simd128" : "-C target-feature=-simd128"
  run([tc.cargo, "build", "--release", "--target", TARGET, ...tc.extraArgs], `cargo build (${simd ? "SIMD128" : "no SIMD"}, ${tc.kind})`, {
    ...tc.env,
    CARGO_TARGET_DIR: sub,
    RUSTFLAGS: [process.env.RUSTFLAGS, flags].filter(Boolean).join(" "),
  }, crate)
  return join(sub, TARGET, "release", "bunmind_wasm.wasm")
}

function layout(bindgen: string, wasm: string, out: string, simd: boolean): void {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  run([bindgen, "--target", "web", "--out-dir", out, "--out-name", "bunmind_wasm", wasm], `wasm-bindgen → ${out}`)
  const files = ["bunmind_wasm_bg.wasm", "bunmind_wasm.js", "bunmind_wasm.d.ts", "bunmind_wasm_bg.wasm.d.ts"]
  // package.json as wasm-pack writes it for --target web.
  const pkg = {
    name: simd ? "bunmind-wasm" : "bunmind-wasm-nosimd",
    type: "module",
    description: `bunmind's tokenizer and inference core in wasm${simd ? " (SIMD128)" : " (no SIMD)"}`,
    version: lockedVersion("bunmind-wasm"),
    license: "Apache-2.0",
    files: files.filter((f) => existsSync(join(out, f))),
    main: "bunmind_wasm.js",
    module: "bunmind_wasm.js",
    types: "bunmind_wasm.d.ts",
    sideEffects: ["./snippets/*"],
  }
  writeFileSync(join(out, "package.json"), JSON.stringify(pkg, null, 2) + "\n")
}

const kib = (f: string) => `${(statSync(f).size / 1024).toFixed(0)} KiB`

// A CJK font too, so that the test's screenshot shows MiniMind's Chinese instead of boxes.
if (args.includes("--browser") && (!existsSync("/usr/bin/chromium") || !existsSync("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"))) {
  aptInstall(["chromium", "fonts-wqy-zenhei"], "the browser tests and bench drive Debian's chromium")
}

const tc = toolchain()
const bindgen = wasmBindgen(lockedVersion("wasm-bindgen"))
const variants = args.includes("--simd-only") ? [true] : [true, false]
for (const simd of variants) {
  const wasm = build(tc, simd)
  const out = join(dist, simd ? "pkg" : "pkg-nosimd")
  layout(bindgen, wasm, out, simd)
  const gz = Bun.gzipSync(readFileSync(join(out, "bunmind_wasm_bg.wasm"))).length
  log(`${out}: bunmind_wasm_bg.wasm ${kib(join(out, "bunmind_wasm_bg.wasm"))} (gzip ${(gz / 1024).toFixed(0)} KiB), glue ${kib(join(out, "bunmind_wasm.js"))}`)
}
