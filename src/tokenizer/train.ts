/**
 * Tokenizer training as an Effect: the native library trains on its own thread; we poll its
 * progress. Interrupting the effect (Ctrl-C) cancels the native job and frees it.
 */
import { ptr } from "bun:ffi"
import { mkdirSync } from "node:fs"
import { join, resolve } from "node:path"
import { Duration, Effect } from "effect"
import { NativeError } from "../native/errors.ts"
import { loadNativeSync, ptrOf, utf8, type NativeLib } from "../native/library.ts"
import { writeJsonAtomic } from "../util/fs.ts"
import { tokenizerConfigFor } from "./templates.ts"
import { Tokenizer, type TokenizerError } from "./tokenizer.ts"

export type Scheme = "minimind" | "v1"
export const SCHEMES: readonly Scheme[] = ["minimind", "v1"]

export interface TrainTokenizerOptions {
  files: readonly string[]
  vocabSize?: number
  minFrequency?: number
  scheme?: string
  maxTokenLength?: number
  /** Output directory: receives tokenizer.json and tokenizer_config.json. */
  out: string
}

export interface TrainProgress {
  state: "running" | "done" | "failed"
  phase: "reading" | "merging" | "done"
  bytes_read: number
  bytes_total: number
  documents: number
  elapsed_s: number
  error?: string | null
}

export class TokenizerTrainError extends Error {
  readonly _tag = "TokenizerTrainError"
}

/** Writes `tokenizer_config.json` (special tokens + chat template) for a scheme, atomically. */
export function writeTokenizerConfig(dir: string, scheme: Scheme): void {
  writeJsonAtomic(join(dir, "tokenizer_config.json"), tokenizerConfigFor(scheme))
}

/**
 * Trains a byte-level BPE; returns the trained tokenizer (scoped: freed with the scope) after
 * writing `out/tokenizer.json` and `out/tokenizer_config.json`.
 */
export const trainTokenizer = (
  opts: TrainTokenizerOptions,
  onProgress: (p: TrainProgress) => void = () => {},
  native?: NativeLib,
) =>
  Effect.gen(function* () {
    const scheme = (opts.scheme ?? "minimind") as Scheme
    if (!SCHEMES.includes(scheme)) {
      return yield* Effect.fail(
        new TokenizerTrainError(`unknown special-token scheme "${opts.scheme}": use one of ${SCHEMES.join(", ")}`),
      )
    }
    const lib = native ?? loadNativeSync("cpu")
    const config = utf8(
      JSON.stringify({
        files: opts.files.map((f) => resolve(f)),
        vocab_size: opts.vocabSize ?? 6400,
        min_frequency: opts.minFrequency ?? 2,
        scheme,
        max_token_length: opts.maxTokenLength ?? null,
      }),
    )
    const box = new Uint32Array(1)
    // The job handle is scoped: interruption cancels and joins the native thread.
    const job = yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          lib.check("bm_tokenizer_train_start", lib.sym.bm_tokenizer_train_start(ptrOf(config), config.byteLength, ptr(box)))
          return box[0]!
        },
        catch: (e) => e as NativeError,
      }),
      (h) => Effect.sync(() => lib.sym.bm_tokenizer_train_free(h)),
    )
    const poll = (): TrainProgress =>
      JSON.parse(lib.readString("bm_tokenizer_train_poll", (b, c, l) => lib.sym.bm_tokenizer_train_poll(job, b, c, l)))
    let p = poll()
    while (p.state === "running") {
      onProgress(p)
      yield* Effect.sleep(Duration.millis(100))
      p = poll()
    }
    onProgress(p)
    if (p.state === "failed") return yield* Effect.fail(new TokenizerTrainError(p.error ?? "tokenizer training failed"))
    const tokenizer = yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          const out = new Uint32Array(1)
          lib.check("bm_tokenizer_train_finish", lib.sym.bm_tokenizer_train_finish(job, ptr(out)))
          return new Tokenizer(lib, out[0]!, opts.out)
        },
        catch: (e) => e as TokenizerError,
      }),
      (t) => Effect.sync(() => t.free()),
    )
    mkdirSync(opts.out, { recursive: true })
    tokenizer.save(opts.out)
    writeTokenizerConfig(opts.out, scheme)
    return tokenizer
  })
