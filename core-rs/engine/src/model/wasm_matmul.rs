//! wasm32 only: `y = x · Wᵀ` for f32 with few rows of `x` (decoding, short prefills).
//!
//! On wasm32 `gemm` runs its matrix-vector paths with its scalar backend (software `fma` calls),
//! which made decoding ~4× slower than native. Here each output is the dot product of two
//! contiguous rows, with SIMD128 lanes when the build enables them and 4 independent accumulators
//! otherwise; a row of `W` is read once for all rows of `x`. Forward only (no training in wasm).
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

/// Rows of `x` up to which this kernel is used (beyond, gemm's blocked kernel wins).
const MAX_ROWS: usize = 64;

struct MatmulT;

#[cfg(target_feature = "simd128")]
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    use core::arch::wasm32::*;
    let n = a.len().min(b.len());
    let chunks = n / 16;
    let mut acc = [f32x4_splat(0.0); 4];
    // SAFETY: every load reads 4 f32 inside a[..n] / b[..n] (i + 16 <= chunks * 16 <= n);
    // v128_load has no alignment requirement.
    unsafe {
        for c in 0..chunks {
            let i = c * 16;
            for (j, acc) in acc.iter_mut().enumerate() {
                let va = v128_load(a.as_ptr().add(i + 4 * j) as *const v128);
                let vb = v128_load(b.as_ptr().add(i + 4 * j) as *const v128);
                *acc = f32x4_add(*acc, f32x4_mul(va, vb));
            }
        }
    }
    let s = f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3]));
    let mut sum = f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s) + f32x4_extract_lane::<2>(s) + f32x4_extract_lane::<3>(s);
    for i in chunks * 16..n {
        sum += a[i] * b[i];
    }
    sum
}

#[cfg(not(target_feature = "simd128"))]
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..4 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

impl CustomOp2 for MatmulT {
    fn name(&self) -> &'static str {
        "wasm-matmul-t"
    }

    /// s1: x [rows, k] contiguous; s2: w [n, k] contiguous → [rows, n]
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("wasm-matmul-t: f32 only")
        };
        let (Some((xo, xe)), Some((wo, we))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("wasm-matmul-t: contiguous inputs only")
        };
        let (rows, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let (x, w) = (&x[xo..xe], &w[wo..we]);
        let mut y = vec![0f32; rows * n];
        for (r, wr) in w.chunks_exact(k).enumerate() {
            for (t, xt) in x.chunks_exact(k).enumerate() {
                y[t * n + r] = dot(xt, wr);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }
}

/// `x2: [rows, k] · w: [n, k]ᵀ`, or None when the shapes/dtypes are not this kernel's case.
pub(crate) fn matmul_t(x2: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let ok = x2.dtype() == candle_core::DType::F32
        && w.dtype() == candle_core::DType::F32
        && x2.device().is_cpu()
        && w.rank() == 2
        && w.is_contiguous()
        && x2.dim(0)? <= MAX_ROWS
        && x2.dim(1)? == w.dim(1)?;
    if !ok {
        return Ok(None);
    }
    Ok(Some(x2.contiguous()?.apply_op2_no_bwd(w, &MatmulT)?))
}
