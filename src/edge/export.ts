/**
 * `bunmind export edge`: a self-contained static chat site for a checkpoint.
 *
 *   <out>/index.html, app.js        the page (UI only)
 *   <out>/worker.js                 the Web Worker that loads the model and generates
 *   <out>/bunmind-chat.js           the runtime (src/edge/runtime.ts + the chat template renderer, bundled): also
 *                                   importable from Bun, Deno or an edge worker
 *   <out>/pkg/, pkg-nosimd/         the wasm core (SIMD128, and a fallback), as wasm-pack lays it out
 *   <out>/model/                    config.json, model.safetensors (f32, bf16 or int8), tokenizer.json,
 *                                   tokenizer_config.json
 *   <out>/manifest.json             files with sizes and sha256 (the browser cache key), generation defaults
 *
 * Before writing, the model is loaded once with the wasm core itself, so a checkpoint that would fail in the
 * browser (config/weights/tokenizer mismatch, truncated file) fails here with the same message.
 */
import { createHash } from "node:crypto"
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { basename, dirname, join, relative, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import { Data } from "effect"
import { loadWasm, type GenerationOptions, type Manifest, type WasmModule } from "./runtime.ts"

export class EdgeExportError extends Data.TaggedError("EdgeExportError")<{ readonly message: string }> {}

export const QUANTIZATIONS = ["none", "bf16", "int8"] as const
export type Quantization = (typeof QUANTIZATIONS)[number]

const repoRoot = resolve(import.meta.dir, "../..")
export const DEFAULT_PKG_DIR = join(repoRoot, "dist/wasm/pkg")
const SITE_DIR = join(import.meta.dir, "site")
const PKG_FILES = ["bunmind_wasm_bg.wasm", "bunmind_wasm.js", "bunmind_wasm.d.ts", "bunmind_wasm_bg.wasm.d.ts", "package.json"]

export interface ExportOptions {
  /** Checkpoint directory: config.json + model.safetensors (and tokenizer files unless `tokenizer` is given). */
  readonly model: string
  readonly out: string
  /** tokenizer.json or its directory (with tokenizer_config.json); default: the model directory. */
  readonly tokenizer?: string
  readonly quantize?: Quantization
  /** The page title; default: the model directory's name. */
  readonly name?: string
  /** Generation defaults for the page (the native option names). */
  readonly generation?: GenerationOptions
  /** dist/wasm/pkg by default; pkg-nosimd is expected beside it. */
  readonly pkgDir?: string
}

export interface ExportReport {
  readonly out: string
  readonly quantization: Quantization
  readonly info: Record<string, unknown>
  /** Bytes of the SIMD .wasm, raw and gzipped. */
  readonly wasmBytes: number
  readonly wasmGzipBytes: number
  /** The page itself: HTML + JS (app, worker, runtime bundle, wasm glue), raw and gzipped; no wasm, no model. */
  readonly pageBytes: number
  readonly pageGzipBytes: number
  readonly modelBytes: number
  /** model.safetensors before quantization. */
  readonly sourceWeightsBytes: number
  readonly weightsBytes: number
  readonly totalBytes: number
}

function fail(message: string): never {
  throw new EdgeExportError({ message })
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")
const gz = (bytes: Uint8Array) => Bun.gzipSync(bytes).length

function readRequired(path: string, hint: string): Uint8Array {
  if (!existsSync(path)) fail(`${path}: not found; ${hint}`)
  return new Uint8Array(readFileSync(path))
}

/** Where tokenizer.json and tokenizer_config.json are. */
function tokenizerFiles(model: string, tokenizer?: string): { json: string; config: string } {
  const given = tokenizer ?? model
  const json = existsSync(given) && statSync(given).isDirectory() ? join(given, "tokenizer.json") : given
  const config = join(dirname(json), "tokenizer_config.json")
  if (!existsSync(json)) fail(`${json}: not found; pass --tokenizer <tokenizer.json or its directory> (the tokenizer the model was trained with)`)
  if (!existsSync(config)) {
    fail(`${config}: not found; the page needs its chat template. Put tokenizer_config.json next to ${basename(json)} (bunmind tokenizer train writes one).`)
  }
  return { json, config }
}

/** Bundles the runtime (and the chat template renderer with @huggingface/jinja) into one browser ES module. */
async function bundleRuntime(): Promise<Uint8Array> {
  const r = await Bun.build({ entrypoints: [join(import.meta.dir, "runtime.ts")], target: "browser", format: "esm", minify: true })
  if (!r.success || r.outputs.length !== 1) fail(`bundling the edge runtime failed: ${r.logs.map(String).join("; ")}`)
  return new Uint8Array(await r.outputs[0]!.arrayBuffer())
}

export async function loadPkg(pkgDir = DEFAULT_PKG_DIR): Promise<WasmModule> {
  if (!existsSync(join(pkgDir, "bunmind_wasm_bg.wasm"))) {
    fail(`${pkgDir}: no wasm build; run \`bun scripts/build-wasm.ts\` first (it installs the wasm32 toolchain and wasm-bindgen)`)
  }
  return loadWasm(pathToFileURL(pkgDir + "/"))
}

export async function exportEdge(opts: ExportOptions): Promise<ExportReport> {
  const quant = opts.quantize ?? "none"
  if (!QUANTIZATIONS.includes(quant)) fail(`--quantize: unknown "${quant}"; use one of ${QUANTIZATIONS.join(", ")}`)
  const modelDir = resolve(opts.model)
  if (!existsSync(modelDir) || !statSync(modelDir).isDirectory()) fail(`${modelDir}: not a directory; --model takes a checkpoint directory (config.json + model.safetensors)`)
  const config = readRequired(join(modelDir, "config.json"), "--model must hold config.json and model.safetensors")
  const source = readRequired(join(modelDir, "model.safetensors"), "--model must hold config.json and model.safetensors")
  const tf = tokenizerFiles(modelDir, opts.tokenizer)
  const tokenizer = new Uint8Array(readFileSync(tf.json))
  const tokenizerConfig = new Uint8Array(readFileSync(tf.config))

  const pkgDir = resolve(opts.pkgDir ?? DEFAULT_PKG_DIR)
  const nosimdDir = join(dirname(pkgDir), `${basename(pkgDir)}-nosimd`)
  const wasm = await loadPkg(pkgDir)
  let weights: Uint8Array = source
  try {
    if (quant !== "none") weights = wasm.quantize(source, quant)
  } catch (e) {
    fail(`${join(modelDir, "model.safetensors")}: ${(e as Error).message}`)
  }
  // Load it as the browser will; also renders the chat template once.
  let info: Record<string, unknown>
  try {
    const { EdgeChat } = await import("./runtime.ts")
    const chat = await EdgeChat.load({ tokenizer, config, weights, tokenizerConfig }, { pkgDir: pathToFileURL(pkgDir + "/") })
    chat.render([{ role: "user", content: "hi" }])
    info = chat.info as unknown as Record<string, unknown>
    chat.free()
  } catch (e) {
    fail(`${modelDir}: the exported model would not load in the browser: ${(e as Error).message}`)
  }

  const out = resolve(opts.out)
  if (existsSync(out) && readdirSync(out).length > 0 && !existsSync(join(out, "manifest.json"))) {
    fail(`${out}: exists and is not an exported site (no manifest.json); choose an empty or new directory`)
  }
  rmSync(out, { recursive: true, force: true })
  for (const d of ["model", "pkg", "pkg-nosimd"]) mkdirSync(join(out, d), { recursive: true })

  const write = (rel: string, bytes: Uint8Array | string) => writeFileSync(join(out, rel), bytes)
  for (const f of ["index.html", "app.js", "worker.js"]) copyFileSync(join(SITE_DIR, f), join(out, f))
  write("bunmind-chat.js", await bundleRuntime())
  const hasNosimd = existsSync(join(nosimdDir, "bunmind_wasm_bg.wasm"))
  for (const f of PKG_FILES) {
    if (existsSync(join(pkgDir, f))) copyFileSync(join(pkgDir, f), join(out, "pkg", f))
    // Without a no-SIMD build, the fallback folder holds the SIMD one (browsers without SIMD then fail clearly).
    const from = hasNosimd ? nosimdDir : pkgDir
    if (existsSync(join(from, f))) copyFileSync(join(from, f), join(out, "pkg-nosimd", f))
  }
  const modelFiles = { config: ["model/config.json", config], weights: ["model/model.safetensors", weights], tokenizer: ["model/tokenizer.json", tokenizer], tokenizer_config: ["model/tokenizer_config.json", tokenizerConfig] } as const
  const files = {} as Manifest["files"]
  for (const [k, [rel, bytes]] of Object.entries(modelFiles)) {
    write(rel, bytes)
    files[k as keyof Manifest["files"]] = { path: rel, bytes: bytes.length, sha256: sha256(bytes) }
  }
  const manifest: Manifest = {
    format: "bunmind-edge",
    version: 1,
    name: opts.name ?? basename(modelDir),
    files,
    quantization: quant,
    generation: { temperature: 0.85, top_p: 0.85, top_k: 50, repetition_penalty: 1.0, max_new_tokens: 256, ...opts.generation },
    wasm: { simd: "pkg/", nosimd: "pkg-nosimd/" },
  }
  write("manifest.json", JSON.stringify(manifest, null, 2) + "\n")

  const size = (rel: string) => statSync(join(out, rel)).size
  const pageFiles = ["index.html", "app.js", "worker.js", "bunmind-chat.js", "pkg/bunmind_wasm.js"]
  const wasmBytes = readFileSync(join(out, "pkg/bunmind_wasm_bg.wasm"))
  const all = walk(out)
  return {
    out,
    quantization: quant,
    info,
    wasmBytes: wasmBytes.length,
    wasmGzipBytes: gz(wasmBytes),
    pageBytes: pageFiles.reduce((s, f) => s + size(f), 0),
    pageGzipBytes: pageFiles.reduce((s, f) => s + gz(readFileSync(join(out, f))), 0),
    modelBytes: Object.values(files).reduce((s, f) => s + f.bytes, 0),
    sourceWeightsBytes: source.length,
    weightsBytes: weights.length,
    totalBytes: all.reduce((s, f) => s + statSync(join(out, f)).size, 0),
  }
}

function walk(dir: string, base = dir): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name), base) : [relative(base, join(dir, e.name))],
  )
}

const mib = (n: number) => `${(n / 1048576).toFixed(2)} MiB`
const kib = (n: number) => `${(n / 1024).toFixed(0)} KiB`

/** The summary `bunmind export edge` prints. */
export function formatReport(r: ExportReport): string {
  const saving = r.quantization === "none" ? "" : ` (${r.quantization}: ${(100 * r.weightsBytes / r.sourceWeightsBytes).toFixed(0)}% of ${mib(r.sourceWeightsBytes)})`
  return [
    `exported ${r.out}`,
    `  wasm       ${kib(r.wasmBytes)} (gzip ${kib(r.wasmGzipBytes)})`,
    `  page       ${kib(r.pageBytes)} HTML+JS (gzip ${kib(r.pageGzipBytes)})`,
    `  weights    ${mib(r.weightsBytes)}${saving}`,
    `  total      ${mib(r.totalBytes)} (model files ${mib(r.modelBytes)})`,
    `serve it with any static server, e.g. \`bunx serve ${relative(process.cwd(), r.out) || "."}\` or \`python3 -m http.server -d ${relative(process.cwd(), r.out) || "."}\`; open it on http://localhost (the browser cache needs a secure context).`,
  ].join("\n")
}
