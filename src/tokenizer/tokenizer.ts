/**
 * A Hugging Face byte-level BPE tokenizer living in the native library. The handle is owned by an
 * Effect scope (`loadTokenizer`): closing the scope — normally, on error, or on interruption —
 * frees it. Methods are synchronous (one native call each) and throw `NativeError` on failure.
 */
import { ptr } from "bun:ffi"
import { existsSync, statSync } from "node:fs"
import { join } from "node:path"
import { Effect, Scope } from "effect"
import { NativeError, NativeLoadError } from "../native/errors.ts"
import { loadNativeSync, ptrOf, utf8, type NativeLib } from "../native/library.ts"
import { Status } from "../native/symbols.ts"

export class Tokenizer {
  #freed = false
  #ids = new Uint32Array(1024)
  #lenBox = new Uint32Array(1)
  readonly vocabSize: number

  constructor(readonly native: NativeLib, readonly handle: number, readonly source: string) {
    const info = JSON.parse(
      native.readString("bm_tokenizer_info", (b, c, l) => native.sym.bm_tokenizer_info(handle, b, c, l)),
    )
    this.vocabSize = info.vocab_size
  }

  /** Token ids of `text`; no special tokens are added unless asked. */
  encode(text: string, addSpecialTokens = false): Uint32Array {
    const bytes = utf8(text)
    // A byte-level BPE never yields more tokens than input bytes (+ a few added specials).
    const need = bytes.byteLength + 8
    if (this.#ids.length < need) this.#ids = new Uint32Array(Math.max(need, this.#ids.length * 2))
    const { sym, check } = this.native
    let code = sym.bm_tokenizer_encode(this.handle, ptrOf(bytes), bytes.byteLength, addSpecialTokens ? 1 : 0, ptr(this.#ids), this.#ids.length, ptr(this.#lenBox))
    if (code === Status.BUFFER_TOO_SMALL) {
      this.#ids = new Uint32Array(this.#lenBox[0]!)
      code = sym.bm_tokenizer_encode(this.handle, ptrOf(bytes), bytes.byteLength, addSpecialTokens ? 1 : 0, ptr(this.#ids), this.#ids.length, ptr(this.#lenBox))
    }
    check("bm_tokenizer_encode", code)
    return this.#ids.slice(0, this.#lenBox[0]!)
  }

  /** Encode many texts in one native call (parallel on the native side). */
  encodeBatch(texts: readonly string[], addSpecialTokens = false): Uint32Array[] {
    const n = texts.length
    if (n === 0) return []
    const parts = texts.map((t) => utf8(t))
    const total = parts.reduce((a, p) => a + p.byteLength, 0)
    const joined = new Uint8Array(Math.max(total, 1))
    const offsets = new Uint32Array(n + 1)
    let o = 0
    parts.forEach((p, i) => {
      offsets[i] = o
      joined.set(p, o)
      o += p.byteLength
    })
    offsets[n] = o
    let ids = new Uint32Array(total + 8 * n + 1)
    const outOffsets = new Uint32Array(n + 1)
    const call = () =>
      this.native.sym.bm_tokenizer_encode_batch(this.handle, ptr(joined), total, ptr(offsets), n, addSpecialTokens ? 1 : 0, ptr(ids), ids.length, ptr(outOffsets))
    let code = call()
    if (code === Status.BUFFER_TOO_SMALL) {
      ids = new Uint32Array(outOffsets[n]!)
      code = call()
    }
    this.native.check("bm_tokenizer_encode_batch", code)
    return Array.from({ length: n }, (_, i) => ids.slice(outOffsets[i]!, outOffsets[i + 1]!))
  }

  decode(ids: ArrayLike<number>, skipSpecialTokens = false): string {
    const arr = ids instanceof Uint32Array ? ids : Uint32Array.from(ids as ArrayLike<number>)
    return this.native.readString(
      "bm_tokenizer_decode",
      (b, c, l) => this.native.sym.bm_tokenizer_decode(this.handle, ptrOf(arr), arr.length, skipSpecialTokens ? 1 : 0, b, c, l),
      arr.length * 8,
    )
  }

  tokenToId(token: string): number | undefined {
    const bytes = utf8(token)
    this.native.check("bm_tokenizer_token_to_id", this.native.sym.bm_tokenizer_token_to_id(this.handle, ptrOf(bytes), bytes.byteLength, ptr(this.#lenBox)))
    const id = this.#lenBox[0]!
    return id === 0xffffffff ? undefined : id
  }

  idToToken(id: number): string | undefined {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return undefined
    return this.native.readString("bm_tokenizer_id_to_token", (b, c, l) => this.native.sym.bm_tokenizer_id_to_token(this.handle, id, b, c, l))
  }

  toJSON(): string {
    return this.native.readString("bm_tokenizer_to_json", (b, c, l) => this.native.sym.bm_tokenizer_to_json(this.handle, b, c, l), 1 << 20)
  }

  /** Writes `tokenizer.json` into `dir` (atomically). */
  save(dir: string): void {
    const bytes = utf8(dir)
    this.native.check("bm_tokenizer_save", this.native.sym.bm_tokenizer_save(this.handle, ptrOf(bytes), bytes.byteLength))
  }

  /** Frees the native tokenizer. Idempotent on this object; the library rejects a second free. */
  free(): void {
    if (this.#freed) return
    this.#freed = true
    this.native.check("bm_tokenizer_free", this.native.sym.bm_tokenizer_free(this.handle))
  }
}

export type TokenizerError = NativeError | NativeLoadError

/** Resolves a tokenizer argument: a `tokenizer.json` file or a directory holding one. */
export const tokenizerFile = (path: string): string =>
  existsSync(path) && statSync(path).isDirectory() ? join(path, "tokenizer.json") : path

/** Opens a tokenizer without a scope; the caller must call `free()`. Prefer `loadTokenizer`. */
export function openTokenizerSync(path: string, native: NativeLib = loadNativeSync("cpu")): Tokenizer {
  const bytes = utf8(path)
  const box = new Uint32Array(1)
  native.check("bm_tokenizer_load", native.sym.bm_tokenizer_load(ptrOf(bytes), bytes.byteLength, ptr(box)))
  return new Tokenizer(native, box[0]!, tokenizerFile(path))
}

/** The vocabulary size of the tokenizer at `path` (opened and freed again). */
export function tokenizerVocabSize(path: string, native?: NativeLib): number {
  const t = openTokenizerSync(path, native)
  try {
    return t.vocabSize
  } finally {
    t.free()
  }
}

/** Loads a tokenizer whose native handle is released when the surrounding scope closes. */
export const loadTokenizer = (
  path: string,
  native?: NativeLib,
): Effect.Effect<Tokenizer, TokenizerError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => openTokenizerSync(path, native ?? loadNativeSync("cpu")),
      catch: (e) => e as TokenizerError,
    }),
    (t) => Effect.sync(() => t.free()),
  )
