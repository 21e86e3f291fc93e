/**
 * The edge chat runtime: bunmind's wasm core + the chat template, as one ES module that runs in a browser page,
 * a Web Worker, Bun, Deno or an edge worker (anything with `fetch` and `WebAssembly`).
 *
 * `bunmind export edge` bundles this file into the site as `bunmind-chat.js` (with @huggingface/jinja inlined);
 * the wasm glue (`pkg/bunmind_wasm.js`) stays a separate file, imported at run time.
 *
 * ```js
 * import { EdgeChat } from "./bunmind-chat.js"
 * const chat = await EdgeChat.fromSite(new URL("./", import.meta.url))  // reads manifest.json + model/
 * for await (const { text } of chat.stream([{ role: "user", content: "你好" }])) process.stdout.write(text)
 * ```
 * Each call to `stream` passes the whole conversation; positions already in the KV cache are reused.
 */
import { renderChatTemplate, type ChatMessage } from "../tokenizer/chat-template.ts"

/** The native path's generation options (field names as the engine's `GenerationOptions`). */
export interface GenerationOptions {
  temperature?: number
  top_k?: number
  top_p?: number
  repetition_penalty?: number
  max_new_tokens?: number
  stop_token_ids?: number[]
  seed?: number
}

export interface ModelInfo {
  vocab_size: number
  tokenizer_vocab_size: number
  hidden_size: number
  num_hidden_layers: number
  num_parameters: number
  max_position_embeddings: number
  bos_token_id: number | null
  eos_token_id: number | null
  weights_encoding: string
  warnings: string[]
}

/** What `bunmind export edge` writes as manifest.json. */
export interface Manifest {
  format: "bunmind-edge"
  version: 1
  name: string
  files: Record<"config" | "weights" | "tokenizer" | "tokenizer_config", { path: string; bytes: number; sha256: string }>
  quantization: "none" | "bf16" | "int8"
  generation: GenerationOptions
  wasm: { simd: string; nosimd: string }
}

/** The wasm-bindgen glue's exports that we use. */
export interface WasmModule {
  default: (input: { module_or_path: BufferSource | WebAssembly.Module }) => Promise<unknown>
  ChatModel: new (tokenizer: Uint8Array, config: Uint8Array, weights: Uint8Array) => WasmChatModel
  quantize: (safetensors: Uint8Array, encoding: string) => Uint8Array
  simdEnabled: () => boolean
  lastPanic: () => string | undefined
}

export interface WasmChatModel {
  info(): ModelInfo
  encode(text: string, addSpecialTokens: boolean): Uint32Array
  decode(ids: Uint32Array, skipSpecialTokens: boolean): string
  tokenToId(token: string): number | undefined
  logits(ids: Uint32Array): Float32Array
  begin(ids: Uint32Array, options: string): number
  step(): { id: number; text: string } | undefined
  finish(): Uint32Array
  finishReason(): string | undefined
  generated(): Uint32Array
  cachedTokens(): number
  reset(): void
  free(): void
}

export interface LoadProgress {
  file: string
  loaded: number
  total: number
  /** "cache" when the file came from the browser's Cache API, else "network". */
  source: "cache" | "network"
}

/** A wasm module that does the 128-bit SIMD op `i8x16.splat` validates only where SIMD128 is supported. */
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11])

export const simdSupported = (): boolean => {
  try {
    return WebAssembly.validate(SIMD_PROBE)
  } catch {
    return false
  }
}

const loaded = new Map<string, Promise<WasmModule>>()

/**
 * Imports and instantiates the wasm glue in `pkgDir` (a URL of the folder holding bunmind_wasm.js and
 * bunmind_wasm_bg.wasm). The bytes are fetched here and handed over, so it works the same from http(s): and file:.
 */
export function loadWasm(pkgDir: string | URL): Promise<WasmModule> {
  const dir = new URL(String(pkgDir).endsWith("/") ? String(pkgDir) : `${pkgDir}/`)
  const key = dir.href
  let p = loaded.get(key)
  if (!p) {
    p = (async () => {
      const glue = (await import(/* @vite-ignore */ new URL("bunmind_wasm.js", dir).href)) as WasmModule
      const res = await fetch(new URL("bunmind_wasm_bg.wasm", dir))
      if (!res.ok) throw new Error(`${new URL("bunmind_wasm_bg.wasm", dir).href}: HTTP ${res.status}`)
      await glue.default({ module_or_path: await res.arrayBuffer() })
      return glue
    })()
    loaded.set(key, p)
    p.catch(() => loaded.delete(key))
  }
  return p
}

/**
 * For runtimes that cannot import code by URL (bundled edge workers): pass the glue module you imported
 * (`import * as glue from "./pkg/bunmind_wasm.js"`) and the wasm as bytes or a compiled `WebAssembly.Module`.
 */
export async function initWasm(glue: WasmModule, wasm: BufferSource | WebAssembly.Module): Promise<WasmModule> {
  await glue.default({ module_or_path: wasm })
  return glue
}

const CACHE_NAME = "bunmind-models-v1"

/** Reads a response body, reporting progress. */
async function readBody(res: Response, onChunk: (loaded: number) => void): Promise<Uint8Array> {
  if (!res.body) return new Uint8Array(await res.arrayBuffer())
  const chunks: Uint8Array[] = []
  let n = 0
  const reader = res.body.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    chunks.push(value)
    n += value.length
    onChunk(n)
  }
  const out = new Uint8Array(n)
  let o = 0
  for (const c of chunks) {
    out.set(c, o)
    o += c.length
  }
  return out
}

/** The Cache API where there is one (browsers, secure contexts incl. localhost; Deno), else undefined. */
async function openCache(): Promise<Cache | undefined> {
  try {
    return typeof caches === "undefined" ? undefined : await caches.open(CACHE_NAME)
  } catch {
    return undefined
  }
}

export interface ModelFiles {
  tokenizer: Uint8Array
  config: Uint8Array
  weights: Uint8Array
  /** tokenizer_config.json: the chat template and special tokens. */
  tokenizerConfig: Uint8Array
}

export interface FetchedModel {
  manifest: Manifest
  files: ModelFiles
  sources: Record<keyof ModelFiles, "cache" | "network">
  /** Stores the network-loaded files in the Cache API; call it once the model has loaded without error. */
  commit: () => Promise<void>
}

/**
 * Fetches manifest.json and the model files of an exported site. Files are looked up in the Cache API first
 * (keyed by their sha256, so a re-export invalidates them); new ones are only cached by `commit()`, i.e. after
 * they loaded, so a broken download is never cached.
 */
export async function fetchModel(base: string | URL, onProgress?: (p: LoadProgress) => void, useCache = true): Promise<FetchedModel> {
  const root = new URL(String(base).endsWith("/") ? String(base) : `${base}/`)
  const mres = await fetch(new URL("manifest.json", root))
  if (!mres.ok) throw new Error(`manifest.json: HTTP ${mres.status} at ${new URL("manifest.json", root).href}; is this a site written by \`bunmind export edge\`?`)
  const manifest = (await mres.json()) as Manifest
  if (manifest.format !== "bunmind-edge") throw new Error("manifest.json: not a bunmind edge manifest (format != bunmind-edge)")
  // The Cache API only takes http(s) URLs (Deno rejects file: ones): a site read from disk is not cached.
  const cache = useCache && /^https?:$/.test(root.protocol) ? await openCache() : undefined
  const names = { tokenizer: "tokenizer", config: "config", weights: "weights", tokenizerConfig: "tokenizer_config" } as const
  const fresh: Array<[string, Uint8Array]> = []
  const sources = {} as FetchedModel["sources"]
  const entries = await Promise.all(
    (Object.keys(names) as Array<keyof ModelFiles>).map(async (k) => {
      const f = manifest.files[names[k]]
      const url = new URL(f.path, root)
      const key = `${url.href}?sha256=${f.sha256}`
      const hit = await cache?.match(key)
      const res = hit ?? (await fetch(url))
      if (!res.ok) throw new Error(`${f.path}: HTTP ${res.status} ${res.statusText} at ${url.href}`)
      const source = hit ? "cache" : "network"
      sources[k] = source
      const total = Number(res.headers.get("content-length")) || f.bytes
      const bytes = await readBody(res, (n) => onProgress?.({ file: f.path, loaded: n, total, source }))
      onProgress?.({ file: f.path, loaded: bytes.length, total: bytes.length, source })
      if (!hit) fresh.push([key, bytes])
      return [k, bytes] as const
    })
  )
  const files = Object.fromEntries(entries) as unknown as ModelFiles
  const commit = async () => {
    if (!cache) return
    for (const [key, bytes] of fresh) {
      // Caching is an optimisation: a full or unavailable cache must not fail a model that loaded.
      try {
        await cache.put(key, new Response(bytes as BodyInit, { headers: { "content-length": String(bytes.length) } }))
      } catch {
        return
      }
    }
  }
  return { manifest, files, sources, commit }
}

interface ChatTemplateInfo {
  template: string
  bosToken?: string
  eosToken?: string
  padToken?: string
  unkToken?: string
}

function specialToken(v: unknown): string | undefined {
  if (typeof v === "string") return v
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content
  return undefined
}

function parseTokenizerConfig(bytes: Uint8Array): ChatTemplateInfo {
  let raw: Record<string, unknown>
  try {
    raw = JSON.parse(new TextDecoder().decode(bytes))
  } catch (e) {
    throw new Error(`tokenizer_config.json: not valid JSON (${(e as Error).message})`)
  }
  let template = raw.chat_template
  if (Array.isArray(template)) template = (template.find((t) => t?.name === "default") ?? template[0])?.template
  if (typeof template !== "string") throw new Error("tokenizer_config.json: no chat_template; export the model with a tokenizer_config.json that has one")
  return {
    template,
    bosToken: specialToken(raw.bos_token),
    eosToken: specialToken(raw.eos_token),
    padToken: specialToken(raw.pad_token),
    unkToken: specialToken(raw.unk_token)
  }
}

export interface StreamStep {
  id: number
  text: string
}

export interface TurnResult {
  ids: number[]
  text: string
  finishReason: string
  /** Positions reused from the KV cache. */
  reused: number
  prefillMs: number
  decodeMs: number
}

export class EdgeChat {
  readonly info: ModelInfo
  readonly simd: boolean
  /** Stop ids: the template's eos token (e.g. <|im_end|>) and config.json's eos_token_id. */
  readonly stopTokenIds: number[]
  last: TurnResult | undefined

  private constructor(
    readonly wasm: WasmModule,
    readonly model: WasmChatModel,
    private readonly template: ChatTemplateInfo,
    readonly defaults: GenerationOptions
  ) {
    this.info = model.info()
    this.simd = wasm.simdEnabled()
    const ids = [template.eosToken ? model.tokenToId(template.eosToken) : undefined, this.info.eos_token_id]
    this.stopTokenIds = [...new Set(ids.filter((i): i is number => typeof i === "number"))]
  }

  /**
   * Loads from bytes. `wasm`: an initialised glue module (see `initWasm`); else it is imported from `pkgDir`
   * (default: ./pkg or ./pkg-nosimd next to this module).
   */
  static async load(
    files: ModelFiles,
    opts: { wasm?: WasmModule; pkgDir?: string | URL; simd?: boolean; defaults?: GenerationOptions } = {}
  ): Promise<EdgeChat> {
    const simd = opts.simd ?? simdSupported()
    const wasm = opts.wasm ?? (await loadWasm(opts.pkgDir ?? new URL(simd ? "./pkg/" : "./pkg-nosimd/", import.meta.url)))
    const template = parseTokenizerConfig(files.tokenizerConfig)
    let model: WasmChatModel
    try {
      model = new wasm.ChatModel(files.tokenizer, files.config, files.weights)
    } catch (e) {
      throw explain(e, wasm)
    }
    return new EdgeChat(wasm, model, template, opts.defaults ?? {})
  }

  /** Loads an exported site's model (manifest.json + model/), using the Cache API where there is one. */
  static async fromSite(
    base: string | URL,
    opts: { simd?: boolean; cache?: boolean; onProgress?: (p: LoadProgress) => void } = {}
  ): Promise<EdgeChat & { sources: FetchedModel["sources"] }> {
    const root = new URL(String(base).endsWith("/") ? String(base) : `${base}/`)
    const simd = opts.simd ?? simdSupported()
    const fetched = await fetchModel(root, opts.onProgress, opts.cache ?? true)
    const chat = await EdgeChat.load(fetched.files, {
      pkgDir: new URL(simd ? fetched.manifest.wasm.simd : fetched.manifest.wasm.nosimd, root),
      simd,
      defaults: fetched.manifest.generation
    })
    await fetched.commit()
    return Object.assign(chat, { sources: fetched.sources })
  }

  /** The prompt text for `messages`, ending with the assistant generation prompt. */
  render(messages: ReadonlyArray<ChatMessage>, opts: { enableThinking?: boolean } = {}): string {
    return renderChatTemplate(this.template.template, messages, {
      addGenerationPrompt: true,
      enableThinking: opts.enableThinking,
      bosToken: this.template.bosToken,
      eosToken: this.template.eosToken,
      padToken: this.template.padToken,
      unkToken: this.template.unkToken,
      source: "tokenizer_config.json"
    })
  }

  encode(text: string): Uint32Array {
    return this.call(() => this.model.encode(text, false))
  }

  decode(ids: ArrayLike<number>, skipSpecialTokens = false): string {
    return this.call(() => this.model.decode(Uint32Array.from(ids), skipSpecialTokens))
  }

  /**
   * Streams the reply to `messages` (the whole conversation), one token per step. Synchronous: the caller decides
   * when to yield to its event loop (a Web Worker does so between tokens so that "stop" arrives).
   */
  *streamSync(messages: ReadonlyArray<ChatMessage>, options: GenerationOptions & { enableThinking?: boolean } = {}): Generator<StreamStep, TurnResult> {
    const { enableThinking, ...gen } = options
    const ids = this.encode(this.render(messages, { enableThinking }))
    return yield* this.streamIds(ids, gen)
  }

  /** As `streamSync`, from token ids. */
  *streamIds(ids: Uint32Array, options: GenerationOptions = {}): Generator<StreamStep, TurnResult> {
    const opts = { stop_token_ids: this.stopTokenIds, ...this.defaults, ...options }
    const t0 = performance.now()
    const reused = this.call(() => this.model.begin(ids, JSON.stringify(opts)))
    let text = ""
    let first = true
    let t1 = t0
    for (;;) {
      const s = this.call(() => this.model.step())
      if (first) {
        t1 = performance.now()
        first = false
      }
      if (!s) break
      text += s.text
      yield s
    }
    const result: TurnResult = {
      ids: [...this.model.generated()],
      text,
      finishReason: this.model.finishReason() ?? "stopped",
      reused,
      prefillMs: t1 - t0,
      decodeMs: performance.now() - t1
    }
    this.last = result
    return result
  }

  /** As `streamSync`, yielding to the event loop between tokens. */
  async *stream(messages: ReadonlyArray<ChatMessage>, options: GenerationOptions & { enableThinking?: boolean } = {}): AsyncGenerator<StreamStep, TurnResult> {
    const it = this.streamSync(messages, options)
    for (;;) {
      const r = it.next()
      if (r.done) return r.value
      yield r.value
      await new Promise((resolve) => setTimeout(resolve, 0))
    }
  }

  /** Forgets the conversation and its KV cache. */
  reset(): void {
    this.model.reset()
  }

  free(): void {
    this.model.free()
  }

  private call<T>(f: () => T): T {
    try {
      return f()
    } catch (e) {
      throw explain(e, this.wasm)
    }
  }
}

/** A wasm trap (Rust panic) becomes an Error carrying the panic message and a hint that the module must be reloaded. */
function explain(e: unknown, wasm: WasmModule): Error {
  if (e instanceof WebAssembly.RuntimeError) {
    const panic = wasm.lastPanic?.()
    return new Error(`internal error in the wasm engine${panic ? `: ${panic}` : ` (${e.message})`}; reload the page to start again`)
  }
  return e instanceof Error ? e : new Error(String(e))
}

export type { ChatMessage }
