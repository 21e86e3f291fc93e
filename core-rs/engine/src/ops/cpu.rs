//! The CPU kernels of the model's elementwise and row-wise arithmetic — RMSNorm, SwiGLU,
//! softmax (scaled, causal), cross-entropy / log-probabilities and RoPE, each with its backward —
//! and the one place each formula is written. Both CPU training paths run them: the hand-written
//! step ([`crate::fast::dense`], which calls them on its own buffers) and the candle ops of the
//! autograd graph (the `cpu_fwd` of every `CustomOp` in this module's siblings, forward and
//! backward). The CUDA side of the same ops is [`super::cuda`] with `<repo>/cuda/*.cu`.
//!
//! Numerics: a vectorisable polynomial `exp` (≤ 2 ulp), lane-split reductions. Each kernel is
//! compiled twice, plain and with AVX2+FMA, and picks one at run time (`simd!`), so the library
//! still runs on any x86-64 (and on other architectures). Every kernel works on one row (or one
//! slice) and every reduction runs over fixed lanes in a fixed order: callers split work over
//! rows only, so results do not depend on the number of threads.

/// Defines `fn name(args) -> ret` whose body is compiled for the baseline target and, on
/// x86-64, a second time with AVX2 + FMA enabled; the AVX2 copy runs when the CPU has it.
macro_rules! simd {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if $crate::ops::cpu::has_avx2() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

const LANES: usize = 8;

/// `e^x` for f32 with ≤ 2 ulp error on [-87, 88] (Cody–Waite reduction, degree-6 polynomial).
/// Branch-free so that loops over slices vectorise. Inputs are clamped to the finite range.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to nearest
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r on |r| ≤ ln2/2 (Taylor terms up to r⁶; the truncation error is below f32 precision)
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn lanes_sum(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Σ a·b over fixed lanes.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = lanes_sum(acc);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut c = a.chunks_exact(LANES);
    for x in &mut c {
        for l in 0..LANES {
            acc[l] = acc[l].max(x[l]);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in c.remainder() {
        m = m.max(x);
    }
    m
}

/// In place `x ← e^(s·(x − m))` with m = max x; returns Σ of the results.
#[inline(always)]
fn exp_shifted(x: &mut [f32], m: f32, s: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut c = x.chunks_exact_mut(LANES);
    for v in &mut c {
        for l in 0..LANES {
            let e = exp((v[l] - m) * s);
            v[l] = e;
            acc[l] += e;
        }
    }
    let mut sum = lanes_sum(acc);
    for v in c.into_remainder() {
        let e = exp((*v - m) * s);
        *v = e;
        sum += e;
    }
    sum
}

/// Σ e^(x − m) over fixed lanes, reading x only (the reduction of [`exp_shifted`] at s = 1,
/// for a caller that needs the sum and not the exponentials).
#[inline(always)]
fn exp_sum(x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut c = x.chunks_exact(LANES);
    for v in &mut c {
        for l in 0..LANES {
            acc[l] += exp(v[l] - m);
        }
    }
    let mut sum = lanes_sum(acc);
    for &v in c.remainder() {
        sum += exp(v - m);
    }
    sum
}

/// `1 / sqrt(mean(x²) + eps)`: RMSNorm's row statistic.
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt()
}

/// RMSNorm's input gradient `dx (+)= inv·(dy⊙w − x̂·Σ(dy⊙w⊙x̂)/n)` (x̂ = x·inv; added when `acc`).
#[inline(always)]
fn rms_dx(x: &[f32], w: &[f32], inv: f32, dy: &[f32], dx: &mut [f32], acc: bool) {
    let n = x.len();
    let mut a = [0f32; LANES];
    let mut i = 0;
    while i + LANES <= n {
        for l in 0..LANES {
            a[l] += dy[i + l] * w[i + l] * x[i + l];
        }
        i += LANES;
    }
    let mut d = lanes_sum(a);
    while i < n {
        d += dy[i] * w[i] * x[i];
        i += 1;
    }
    let c = d * inv * inv / n as f32; // Σ dy·w·x̂ / n, times inv for x̂
    if acc {
        for j in 0..n {
            dx[j] += inv * (dy[j] * w[j] - x[j] * c);
        }
    } else {
        for j in 0..n {
            dx[j] = inv * (dy[j] * w[j] - x[j] * c);
        }
    }
}

/// RMSNorm's weight gradient of one row, accumulated: `dw += dy ⊙ x̂`.
#[inline(always)]
fn rms_dw(x: &[f32], inv: f32, dy: &[f32], dw: &mut [f32]) {
    for j in 0..x.len() {
        dw[j] += dy[j] * x[j] * inv;
    }
}

/// SwiGLU's local gradients at one element of `a = silu(g)·u` for upstream `d`: (∂/∂g, ∂/∂u).
#[inline(always)]
fn swiglu_grads(g: f32, u: f32, d: f32) -> (f32, f32) {
    let s = sigmoid(g);
    let silu = g * s;
    (d * u * s * (1.0 + g * (1.0 - s)), d * silu)
}

simd! {
    /// y = w ⊙ x·inv with inv = 1/sqrt(mean(x²) + eps); returns inv.
    pub(crate) fn rmsnorm_row(x: &[f32], w: &[f32], y: &mut [f32], eps: f32) -> f32 {
        let inv = inv_rms(x, eps);
        for ((yi, &xi), &wi) in y.iter_mut().zip(x).zip(w) {
            *yi = xi * inv * wi;
        }
        inv
    }
}

simd! {
    /// RMSNorm backward for one row (the statistic `inv` from [`rmsnorm_row`]): `dx (+)= ∂/∂x`
    /// (added to dx when `acc`), and `dw += dy ⊙ x̂` (x̂ = x·inv).
    pub(crate) fn rmsnorm_bwd_row(x: &[f32], w: &[f32], inv: f32, dy: &[f32], dx: &mut [f32], dw: &mut [f32], acc: bool) {
        rms_dx(x, w, inv, dy, dx, acc);
        rms_dw(x, inv, dy, dw);
    }
}

simd! {
    /// RMSNorm input gradient alone for one row, recomputing the statistic: `dx = ∂/∂x`.
    pub(crate) fn rmsnorm_dx_row(x: &[f32], w: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
        rms_dx(x, w, inv_rms(x, eps), dy, dx, false);
    }
}

simd! {
    /// RMSNorm weight gradient alone for one row, recomputing the statistic: `dw += dy ⊙ x̂`.
    pub(crate) fn rmsnorm_dw_row(x: &[f32], eps: f32, dy: &[f32], dw: &mut [f32]) {
        rms_dw(x, inv_rms(x, eps), dy, dw);
    }
}

simd! {
    /// a = silu(g) ⊙ u
    pub(crate) fn swiglu_fwd(g: &[f32], u: &[f32], a: &mut [f32]) {
        for ((ai, &gi), &ui) in a.iter_mut().zip(g).zip(u) {
            *ai = gi * sigmoid(gi) * ui;
        }
    }
}

simd! {
    /// In place: (g, u) ← (∂a/∂g · da, ∂a/∂u · da) for a = silu(g) ⊙ u.
    pub(crate) fn swiglu_bwd(g: &mut [f32], u: &mut [f32], da: &[f32]) {
        for ((gi, ui), &d) in g.iter_mut().zip(u.iter_mut()).zip(da) {
            (*gi, *ui) = swiglu_grads(*gi, *ui, d);
        }
    }
}

simd! {
    /// dg = ∂a/∂g · da for a = silu(g) ⊙ u.
    pub(crate) fn swiglu_bwd_gate(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32]) {
        for (((o, &gi), &ui), &d) in dg.iter_mut().zip(g).zip(u).zip(da) {
            *o = swiglu_grads(gi, ui, d).0;
        }
    }
}

simd! {
    /// du = ∂a/∂u · da for a = silu(g) ⊙ u.
    pub(crate) fn swiglu_bwd_up(g: &[f32], da: &[f32], du: &mut [f32]) {
        for ((o, &gi), &d) in du.iter_mut().zip(g).zip(da) {
            *o = swiglu_grads(gi, 0.0, d).1;
        }
    }
}

simd! {
    /// Causal softmax of `scale·row[..valid]` in place; row[valid..] ← 0.
    pub(crate) fn softmax_row(row: &mut [f32], valid: usize, scale: f32) {
        let (head, tail) = row.split_at_mut(valid);
        let m = max(head);
        let sum = exp_shifted(head, m, scale);
        let r = 1.0 / sum;
        for v in head.iter_mut() {
            *v *= r;
        }
        tail.fill(0.0);
    }
}

simd! {
    /// Attention softmax backward for one row: dp ← scale · p ⊙ (dp − Σ dp⊙p) over [..valid];
    /// dp[valid..] ← 0.
    pub(crate) fn softmax_bwd_row(p: &[f32], dp: &mut [f32], valid: usize, scale: f32) {
        let d = dot(&p[..valid], &dp[..valid]);
        for (g, &pi) in dp[..valid].iter_mut().zip(&p[..valid]) {
            *g = scale * pi * (*g - d);
        }
        dp[valid..].fill(0.0);
    }
}

simd! {
    /// Cross-entropy of one row of logits against `target`; the row becomes the gradient
    /// `softmax − onehot(target)`. Returns −log p(target).
    pub(crate) fn xent_row(row: &mut [f32], target: usize) -> f32 {
        let m = max(row);
        let xt = row[target];
        let sum = exp_shifted(row, m, 1.0);
        let lse = m + sum.ln();
        let r = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= r;
        }
        row[target] -= 1.0;
        lse - xt
    }
}

simd! {
    /// `log softmax(x)[target] = x[target] − logsumexp(x)` of one row of logits, reading the row
    /// only (the forward of the candle log-prob op; [`xent_row`] is its fused loss + gradient).
    pub(crate) fn logprob_row(x: &[f32], target: usize) -> f32 {
        let m = max(x);
        x[target] - (m + exp_sum(x, m).ln())
    }
}

/// RoPE on one head vector in place, by angle (`sign` = 1) or its inverse (`sign` = −1, the
/// backward): rotate-half pairs (x_i, x_{i+d/2}) or interleaved pairs (x_{2i}, x_{2i+1}).
#[inline]
pub(crate) fn rope_row(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool, sign: f32) {
    let half = x.len() / 2;
    if interleaved {
        for i in 0..half {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            let (c, s) = (cos[i], sign * sin[i]);
            x[2 * i] = a * c - b * s;
            x[2 * i + 1] = b * c + a * s;
        }
    } else {
        let (x1, x2) = x.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (x1[i], x2[i]);
            let (c, s) = (cos[i], sign * sin[i]);
            x1[i] = a * c - b * s;
            x2[i] = b * c + a * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let a = exp(x) as f64;
            let b = (x as f64).exp();
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn reductions_match_plain_sums() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        assert!((dot(&a, &b) as f64 - plain).abs() < 1e-5);
        assert_eq!(max(&a), a.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    }

    #[test]
    fn softmax_and_xent_rows() {
        let mut row = vec![0.5f32, -1.0, 2.0, 0.0, 9.0];
        softmax_row(&mut row, 3, 0.5);
        let e: Vec<f64> = [0.25f64, -0.5, 1.0].iter().map(|v| v.exp()).collect();
        let s: f64 = e.iter().sum();
        for i in 0..3 {
            assert!((row[i] as f64 - e[i] / s).abs() < 1e-6);
        }
        assert_eq!(&row[3..], &[0.0, 0.0]);

        let logits = [1.0f32, 2.0, -0.5, 0.25];
        let mut g = logits;
        let l = xent_row(&mut g, 1);
        let lse = logits.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        assert!((l as f64 - (lse - 2.0)).abs() < 1e-6);
        let p1 = (2.0f64 - lse).exp();
        assert!((g[1] as f64 - (p1 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn rope_inverse_undoes_rope() {
        for inter in [false, true] {
            let x0: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
            let cos = [0.3f32, -0.8, 0.5, 1.0];
            let sin: Vec<f32> = cos.iter().map(|c: &f32| (1.0 - c * c).sqrt()).collect();
            let mut x = x0.clone();
            rope_row(&mut x, &cos, &sin, inter, 1.0);
            assert_ne!(x, x0);
            rope_row(&mut x, &cos, &sin, inter, -1.0);
            for (a, b) in x.iter().zip(&x0) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }
}
