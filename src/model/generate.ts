/**
 * Text generation over the native KV-cache sessions: one native call per token, so callers can
 * stream, and stop (free the session) between any two tokens.
 */
import { ptr } from "bun:ffi"
import { Effect, Scope } from "effect"
import { NativeError } from "../native/errors.ts"
import { ptrOf, utf8 } from "../native/library.ts"
import type { Tokenizer } from "../tokenizer/tokenizer.ts"
import type { Model } from "./model.ts"

export interface GenerationOptions {
  /** 0 = greedy. Default 0.85 (MiniMind). */
  temperature?: number
  /** 0 = off. Default 50. */
  topK?: number
  /** 1 = off. Default 0.85. */
  topP?: number
  /** CTRL-style; 1 = off. */
  repetitionPenalty?: number
  maxNewTokens?: number
  /** Generation ends after one of these ids (it is produced, then the session ends). */
  stopTokenIds?: number[]
  seed?: number
}

export const DEFAULT_GENERATION: Required<GenerationOptions> = {
  temperature: 0.85,
  topK: 50,
  topP: 0.85,
  repetitionPenalty: 1.0,
  maxNewTokens: 512,
  stopTokenIds: [2],
  seed: 42,
}

const NO_TOKEN = 0xffffffff

const optionsJson = (o: GenerationOptions, stops: readonly number[]) =>
  JSON.stringify({
    temperature: o.temperature ?? DEFAULT_GENERATION.temperature,
    top_k: o.topK ?? DEFAULT_GENERATION.topK,
    top_p: o.topP ?? DEFAULT_GENERATION.topP,
    repetition_penalty: o.repetitionPenalty ?? DEFAULT_GENERATION.repetitionPenalty,
    max_new_tokens: o.maxNewTokens ?? DEFAULT_GENERATION.maxNewTokens,
    stop_token_ids: o.stopTokenIds ?? stops,
    seed: o.seed ?? DEFAULT_GENERATION.seed,
  })

export interface SessionInfo {
  prompt_tokens: number
  generated_tokens: number
  finish_reason: null | "stop" | "length" | "context_full"
}

export class Session {
  #freed = false
  #tok = new Uint32Array(1)
  #done = new Uint32Array(1)
  finished = false

  constructor(readonly model: Model, readonly handle: number) {}

  /** The next token id, or undefined once the session has ended. */
  next(): number | undefined {
    if (this.finished) return undefined
    const { native } = this.model
    native.check("bm_session_next", native.sym.bm_session_next(this.handle, ptr(this.#tok), ptr(this.#done)))
    this.finished = this.#done[0] === 1
    return this.#tok[0] === NO_TOKEN ? undefined : this.#tok[0]
  }

  info(): SessionInfo {
    const { native } = this.model
    return JSON.parse(native.readString("bm_session_info", (b, c, l) => native.sym.bm_session_info(this.handle, b, c, l)))
  }

  free(): void {
    if (this.#freed) return
    this.#freed = true
    this.model.native.check("bm_session_free", this.model.native.sym.bm_session_free(this.handle))
  }
}

export function openSessionSync(model: Model, prompt: ArrayLike<number>, opts: GenerationOptions = {}): Session {
  const ids = prompt instanceof Uint32Array ? prompt : Uint32Array.from(prompt)
  const o = utf8(optionsJson(opts, model.stopTokenIds))
  const box = new Uint32Array(1)
  const { native } = model
  native.check("bm_session_new", native.sym.bm_session_new(model.handle, ptrOf(ids), ids.length, ptrOf(o), o.byteLength, ptr(box)))
  return new Session(model, box[0]!)
}

export const openSession = (model: Model, prompt: ArrayLike<number>, opts: GenerationOptions = {}): Effect.Effect<Session, NativeError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({ try: () => openSessionSync(model, prompt, opts), catch: (e) => e as NativeError }),
    (s) => Effect.sync(() => s.free()),
  )

/**
 * Streams decoded text: yields each new piece of text as soon as it is complete UTF-8 (a token
 * that ends inside a multi-byte character is held back until the character is whole). The
 * session is freed when the iteration ends, also when the consumer stops early.
 */
export function* streamText(
  model: Model,
  tokenizer: Tokenizer,
  prompt: ArrayLike<number>,
  opts: GenerationOptions = {},
  skipSpecialTokens = true,
): Generator<{ text: string; token: number }, SessionInfo, void> {
  const session = openSessionSync(model, prompt, opts)
  const ids: number[] = []
  let emitted = ""
  try {
    for (;;) {
      const t = session.next()
      if (t === undefined) break
      ids.push(t)
      const text = tokenizer.decode(ids, skipSpecialTokens)
      if (!text.endsWith("\uFFFD") && text.length >= emitted.length && text.startsWith(emitted)) {
        const piece = text.slice(emitted.length)
        emitted = text
        yield { text: piece, token: t }
      } else {
        yield { text: "", token: t }
      }
      if (session.finished) break
    }
    const full = tokenizer.decode(ids, skipSpecialTokens)
    if (full !== emitted && full.startsWith(emitted)) yield { text: full.slice(emitted.length), token: -1 }
    return session.info()
  } finally {
    session.free()
  }
}

/** Greedy/sampled generation of several prompts at once; returns each row's generated ids. */
export function generateBatch(model: Model, prompts: ArrayLike<number>[], opts: GenerationOptions = {}): number[][] {
  const n = prompts.length
  if (n === 0) return []
  const offsets = new Uint32Array(n + 1)
  let total = 0
  prompts.forEach((p, i) => {
    offsets[i] = total
    total += p.length
  })
  offsets[n] = total
  const ids = new Uint32Array(Math.max(total, 1))
  prompts.forEach((p, i) => ids.set(p as ArrayLike<number>, offsets[i]!))
  const o = utf8(optionsJson(opts, model.stopTokenIds))
  const box = new Uint32Array(1)
  const { native } = model
  native.check("bm_batch_session_new", native.sym.bm_batch_session_new(model.handle, ptr(ids), ptr(offsets), n, ptrOf(o), o.byteLength, ptr(box)))
  const h = box[0]!
  const out: number[][] = prompts.map(() => [])
  const step = new Uint32Array(n)
  const done = new Uint32Array(1)
  try {
    for (;;) {
      native.check("bm_batch_session_next", native.sym.bm_batch_session_next(h, ptr(step), n, ptr(done)))
      step.forEach((t, i) => {
        if (t !== NO_TOKEN) out[i]!.push(t)
      })
      if (done[0] === 1) break
    }
  } finally {
    native.sym.bm_batch_session_free(h)
  }
  return out
}
