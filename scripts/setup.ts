#!/usr/bin/env bun
/**
 * Makes a fresh checkout ready: builds the native library (incremental; a no-op when fresh) and,
 * with --test, installs the Python packages the tests compare against (tokenizers, transformers,
 * numpy, safetensors, torch + datasets for upstream MiniMind's trainers, llama-cpp-python: the real llama.cpp
 * for the GGUF export test, and peft for the LoRA adapter interop) when they are missing, and Go (the Ollama Modelfile template check). Called by `npm run demo` / `npm test`.
 * With --cuda it also builds the CUDA library (dist/native/libbunmind-cuda.so); only then are the
 * pinned nvcc 13.0 wheels installed (into .cuda/, see scripts/cuda-toolchain.ts). The default
 * demo/test path never touches CUDA.
 */
import { resolve } from "node:path"

const root = resolve(import.meta.dir, "..")
const forTests = process.argv.includes("--test")

function run(cmd: string[], what: string, cwd = root): void {
  const p = Bun.spawnSync(cmd, { cwd, stdio: ["inherit", "inherit", "inherit"], env: process.env })
  if (p.exitCode !== 0) {
    console.error(`[setup] ${what} failed (${cmd.join(" ")}, exit ${p.exitCode})`)
    process.exit(p.exitCode ?? 1)
  }
}

if (!Bun.which("cargo")) {
  console.error("[setup] cargo not found: installing the Rust toolchain with rustup (https://rustup.rs)")
  run(["sh", "-c", "curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal"], "rustup install")
  process.env.PATH = `${process.env.HOME}/.cargo/bin:${process.env.PATH}`
}
run(["bun", "scripts/build-native.ts"], "native build")
if (process.argv.includes("--cuda")) run(["bun", "scripts/build-native.ts", "--cuda"], "CUDA native build")

if (forTests) {
  // Browser tests (web chat, edge chat, report) drive Debian's chromium through playwright-core.
  if (!Bun.which("chromium") && process.platform === "linux" && Bun.which("apt-get")) {
    console.error("[setup] installing chromium for the browser tests (apt-get)")
    const sudo = process.getuid?.() === 0 ? [] : ["sudo"]
    run([...sudo, "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null"], "apt-get install chromium")
  }
  // The wasm core (SIMD and no-SIMD builds) for the edge tests; also installs chromium + a CJK font.
  run(["bun", "scripts/build-wasm.ts", "--browser"], "wasm build")
  const py = Bun.which("python3") ?? Bun.which("python")
  if (!py) {
    console.error("[setup] python3 not found: the parity tests need it (apt-get install python3 python3-pip)")
    process.exit(1)
  }
  // torch + datasets: upstream MiniMind's own trainers run as the oracle of tests/upstream-parity.test.ts;
  // peft: PEFT's LoRA adapters, both ways, in tests/interop-peft.test.ts.
  // llama_cpp (llama-cpp-python, built from source by pip: a few minutes once, then cached): llama.cpp itself
  // loads the files of `bunmind export gguf` in tests/interop-gguf.test.ts.
  const probe = Bun.spawnSync([py, "-c", "import tokenizers, transformers, numpy, safetensors, torch, datasets, llama_cpp, peft"])
  if (probe.exitCode !== 0) {
    console.error("[setup] installing Python reference packages (tokenizers, transformers, numpy, safetensors, torch, datasets, llama-cpp-python, peft)")
    run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "tokenizers", "transformers", "numpy", "safetensors", "torch", "datasets", "llama-cpp-python", "peft"], "pip install")
  }
  // Go's text/template (the engine of Ollama's TEMPLATE) renders the exported Modelfile in tests/interop-gguf.test.ts.
  if (!Bun.which("go") && process.platform === "linux" && Bun.which("apt-get")) {
    console.error("[setup] installing Go for the Ollama template check (apt-get)")
    const sudo = process.getuid?.() === 0 ? [] : ["sudo"]
    run([...sudo, "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null"], "apt-get install golang-go")
  }
}
