/**
 * Plain TypeScript reference kernels: the math of the engine's ops written as directly as possible
 * (loops over Float32Array inputs, float64 accumulation, float32 outputs), used as the correctness
 * oracle for every backend in bench/kernels.ts and as the slowest baseline. Same layouts and
 * semantics as `core-rs/engine/src/kernels.rs`.
 */
import { rng } from "../../src/util/rng.ts"

/** y = x · wᵀ; x: [m, k], w: [n, k] → [m, n]. */
export function matmulT(x: Float32Array, w: Float32Array, m: number, k: number, n: number): Float32Array {
  const y = new Float32Array(m * n)
  for (let i = 0; i < m; i++) {
    const xo = i * k
    for (let j = 0; j < n; j++) {
      const wo = j * k
      let s = 0
      for (let p = 0; p < k; p++) s += x[xo + p]! * w[wo + p]!
      y[i * n + j] = s
    }
  }
  return y
}

/** RMSNorm over rows: w ⊙ x / sqrt(mean(x²) + eps); x: [rows, dim], w: [dim]. */
export function rmsNorm(x: Float32Array, w: Float32Array, rows: number, dim: number, eps: number): Float32Array {
  const y = new Float32Array(rows * dim)
  for (let r = 0; r < rows; r++) {
    const o = r * dim
    let ss = 0
    for (let i = 0; i < dim; i++) ss += x[o + i]! * x[o + i]!
    const inv = 1 / Math.sqrt(ss / dim + eps)
    for (let i = 0; i < dim; i++) y[o + i] = x[o + i]! * inv * w[i]!
  }
  return y
}

/** cos/sin tables [t, d/2]: f_i = θ^(−2i/d) (f64, stored f32), angle p·f_i in f32, as the engine. */
export function ropeTables(t: number, d: number, theta: number): { cos: Float32Array; sin: Float32Array } {
  const half = d / 2
  const f = new Float32Array(half)
  for (let i = 0; i < half; i++) f[i] = 1 / Math.pow(theta, (2 * i) / d)
  const cos = new Float32Array(t * half)
  const sin = new Float32Array(t * half)
  for (let p = 0; p < t; p++)
    for (let i = 0; i < half; i++) {
      const a = Math.fround(p * f[i]!)
      cos[p * half + i] = Math.cos(a)
      sin[p * half + i] = Math.sin(a)
    }
  return { cos, sin }
}

/**
 * Rotary embedding of x: [b, h, t, d] at positions 0..t. Rotate-half pairs (x_i, x_{i+d/2});
 * interleaved pairs (x_{2i}, x_{2i+1}). Rotation: (a, c) → (a·cos − c·sin, c·cos + a·sin).
 */
export function rope(x: Float32Array, b: number, h: number, t: number, d: number, tables: { cos: Float32Array; sin: Float32Array }, interleaved: boolean): Float32Array {
  const y = new Float32Array(x.length)
  const half = d / 2
  for (let bh = 0; bh < b * h; bh++)
    for (let p = 0; p < t; p++) {
      const o = (bh * t + p) * d
      for (let i = 0; i < half; i++) {
        const c = tables.cos[p * half + i]!
        const s = tables.sin[p * half + i]!
        const [ia, ib] = interleaved ? [o + 2 * i, o + 2 * i + 1] : [o + i, o + i + half]
        const a = x[ia]!
        const e = x[ib]!
        y[ia] = a * c - e * s
        y[ib] = e * c + a * s
      }
    }
  return y
}

export interface AttentionShape {
  b: number
  t: number
  hidden: number
  heads: number
  kvHeads: number
  headDim: number
  theta: number
}

/**
 * The model's attention layer (no dropout, causal, no cache): q = x·Wqᵀ, k = x·Wkᵀ, v = x·Wvᵀ,
 * rotate-half RoPE on q and k, query head h reads kv head ⌊h / (heads/kv)⌋, softmax(q·kᵀ/√d) over
 * positions j ≤ i, probs·v, then ·Woᵀ. x: [b, t, hidden] → [b, t, hidden].
 */
export function attention(s: AttentionShape, x: Float32Array, wq: Float32Array, wk: Float32Array, wv: Float32Array, wo: Float32Array): Float32Array {
  const { b, t, hidden, heads, kvHeads, headDim: d } = s
  const n = b * t
  const q = matmulT(x, wq, n, hidden, heads * d) // [b, t, heads, d]
  const k = matmulT(x, wk, n, hidden, kvHeads * d)
  const v = matmulT(x, wv, n, hidden, kvHeads * d)
  // To [b, h, t, d] for RoPE.
  const toBHTD = (z: Float32Array, h: number) => {
    const o = new Float32Array(z.length)
    for (let bi = 0; bi < b; bi++)
      for (let ti = 0; ti < t; ti++)
        for (let hi = 0; hi < h; hi++)
          for (let di = 0; di < d; di++) o[((bi * h + hi) * t + ti) * d + di] = z[((bi * t + ti) * h + hi) * d + di]!
    return o
  }
  const tables = ropeTables(t, d, s.theta)
  const qr = rope(toBHTD(q, heads), b, heads, t, d, tables, false)
  const kr = rope(toBHTD(k, kvHeads), b, kvHeads, t, d, tables, false)
  const vr = toBHTD(v, kvHeads)
  const rep = heads / kvHeads
  const scale = 1 / Math.sqrt(d)
  const ctx = new Float32Array(n * heads * d) // [b, t, heads, d]
  const p = new Float64Array(t)
  for (let bi = 0; bi < b; bi++)
    for (let hi = 0; hi < heads; hi++) {
      const kh = Math.floor(hi / rep)
      const qo = (bi * heads + hi) * t * d
      const ko = (bi * kvHeads + kh) * t * d
      for (let i = 0; i < t; i++) {
        let max = -Infinity
        for (let j = 0; j <= i; j++) {
          let dot = 0
          for (let e = 0; e < d; e++) dot += qr[qo + i * d + e]! * kr[ko + j * d + e]!
          p[j] = dot * scale
          if (p[j]! > max) max = p[j]!
        }
        let sum = 0
        for (let j = 0; j <= i; j++) {
          p[j] = Math.exp(p[j]! - max)
          sum += p[j]!
        }
        const out = ((bi * t + i) * heads + hi) * d
        for (let e = 0; e < d; e++) {
          let acc = 0
          for (let j = 0; j <= i; j++) acc += p[j]! * vr[ko + j * d + e]!
          ctx[out + e] = acc / sum
        }
      }
    }
  return matmulT(ctx, wo, n, heads * d, hidden)
}

/**
 * Masked softmax cross-entropy: mean over positions with mask > 0 of logsumexp(x) − x[target];
 * with `grad`, d loss / d logits = (softmax(x) − onehot(target)) · [mask > 0] / count.
 * Returns [loss, grad...] like the engine kernel.
 */
export function crossEntropy(logits: Float32Array, targets: Uint32Array, mask: Float32Array, rows: number, v: number, grad: boolean): Float32Array {
  let count = 0
  for (let r = 0; r < rows; r++) if (mask[r]! > 0) count++
  const out = new Float32Array(grad ? 1 + rows * v : 1)
  let total = 0
  for (let r = 0; r < rows; r++) {
    if (!(mask[r]! > 0)) continue
    const o = r * v
    let max = -Infinity
    for (let i = 0; i < v; i++) if (logits[o + i]! > max) max = logits[o + i]!
    let sum = 0
    for (let i = 0; i < v; i++) sum += Math.exp(logits[o + i]! - max)
    const lse = max + Math.log(sum)
    total += lse - logits[o + targets[r]!]!
    if (grad) {
      for (let i = 0; i < v; i++) out[1 + o + i] = Math.exp(logits[o + i]! - lse) / count
      out[1 + o + targets[r]!] = out[1 + o + targets[r]!]! - 1 / count
    }
  }
  out[0] = total / count
  return out
}

export interface AdamWArgs {
  step: number
  lr: number
  beta1: number
  beta2: number
  eps: number
  weightDecay: number
}

/** One PyTorch AdamW step from moments after step − 1 steps; returns [w', m', v']. */
export function adamw(w: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, a: AdamWArgs): Float32Array {
  const n = w.length
  const out = new Float32Array(3 * n)
  const bc1 = 1 - Math.pow(a.beta1, a.step)
  const bc2 = 1 - Math.pow(a.beta2, a.step)
  const first = a.step === 1
  for (let i = 0; i < n; i++) {
    const gi = g[i]!
    const mi = (first ? 0 : a.beta1 * m[i]!) + (1 - a.beta1) * gi
    const vi = (first ? 0 : a.beta2 * v[i]!) + (1 - a.beta2) * gi * gi
    const wi = w[i]! * (1 - a.lr * a.weightDecay)
    out[i] = wi - (a.lr / bc1) * (mi / (Math.sqrt(vi) / Math.sqrt(bc2) + a.eps))
    out[n + i] = mi
    out[2 * n + i] = vi
  }
  return out
}

/** Deterministic uniform values in [−scale, scale) (the stream "bench/random-f32" of `seed`, util/rng.ts). */
export function randomF32(n: number, seed: number, scale = 1): Float32Array {
  const next = rng(seed, "bench/random-f32")
  return Float32Array.from({ length: n }, () => (next() * 2 - 1) * scale)
}

/**
 * Normalised max error: max |got − want| / max(max |want|, 1e-30). A backend agrees when this is
 * ≤ its kernel's tolerance. NaN or a length mismatch counts as infinitely wrong.
 */
export function maxRelError(got: Float32Array, want: Float32Array): number {
  if (got.length !== want.length) return Infinity
  let err = 0
  let scale = 0
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!)
    if (!(d <= err)) err = Number.isNaN(d) ? Infinity : d
    const a = Math.abs(want[i]!)
    if (a > scale) scale = a
  }
  return err / Math.max(scale, 1e-30)
}
