/**
 * The one pseudo-random generator of the TypeScript side, with named streams.
 *
 *   rng(seed, "train/split")      floats in [0, 1)
 *   rngU32(seed, "sampler/epoch/3") 32-bit unsigned integers
 *
 * The generator is mulberry32 (32-bit state, period 2³²): plenty for shuffles, data generation
 * and sampling decisions, and cheap to recompute from (seed, stream) alone, which is what resume
 * needs. A stream's state is the seed hashed with the stream's name (FNV-1a over its UTF-16 code
 * units, offset by the golden ratio), so streams of one seed are independent and adding a stream
 * never moves another. Not for anything secret.
 *
 * Stream names in use: "train/split" (held-out samples), "sampler/epoch/<e>" (each epoch's order),
 * "augment/line/<n>" (SFT augmentation of record n), the demo data's "world", "split", "pretrain",
 * "sft", "echo", "context", "dpo" (demo/facts.ts), and tests' and benchmarks' own names.
 */

/** The stream's initial state: `seed` hashed with `stream`. */
export function streamState(seed: number, stream: string): number {
  let h = (seed ^ 0x9e3779b9) >>> 0
  for (let i = 0; i < stream.length; i++) h = Math.imul(h ^ stream.charCodeAt(i), 0x01000193) >>> 0
  return h
}

/** 32-bit unsigned integers of the stream (`seed`, `stream`). */
export function rngU32(seed: number, stream: string): () => number {
  let a = streamState(seed, stream)
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }
}

/** Floats in [0, 1) of the stream (`seed`, `stream`). */
export function rng(seed: number, stream: string): () => number {
  const next = rngU32(seed, stream)
  return () => next() / 4294967296
}

type Shufflable = { length: number; [i: number]: any }

/** Fisher–Yates shuffle of `xs` in place with `next` (floats in [0, 1)); returns `xs`. */
export function shuffleWith<T extends Shufflable>(xs: T, next: () => number): T {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1))
    const t = xs[i]
    xs[i] = xs[j]
    xs[j] = t
  }
  return xs
}

/** Fisher–Yates shuffle of `xs` in place with the stream (`seed`, `stream`); returns `xs`. */
export const shuffle = <T extends Shufflable>(xs: T, seed: number, stream: string): T => shuffleWith(xs, rng(seed, stream))
