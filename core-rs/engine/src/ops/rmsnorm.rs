//! RMSNorm `y = w ⊙ x / sqrt(mean(x²) + eps)` over the last dim, with gradients for x and w.
//!
//! Backward (per row, x̂ = x·inv, inv = 1/sqrt(mean(x²) + eps), n = row length):
//! `dx = inv · (dy⊙w − x̂ · Σ(dy⊙w⊙x̂) / n)`, `dw = Σ_rows dy ⊙ x̂`.
//! The row statistic is recomputed in the backward (one pass over the row) instead of stored.
//! `dw` sums fixed blocks of rows in parallel and then the block partials in block order.
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{cpu, f32_data, fused_ok, map_rows, row, same_shape};
use crate::Result;

/// Rows per partial sum of the weight gradient (fixed: the result does not depend on threads).
const DW_BLOCK_ROWS: usize = 64;

/// Row length d of x, checking that the weight is `[d]`.
fn dims(l: &Layout, w: &Layout, op: &str) -> candle_core::Result<usize> {
    let d = super::row_len(l, op)?;
    if w.shape().dims() != [d] {
        candle_core::bail!("{op}: weight must be [{d}] (the last dim of x), got {:?}", w.shape());
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy)]
pub struct RmsNormOp {
    pub eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "bunmind-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_data(s1, l1, "rms_norm", "x")?, f32_data(s2, l2, "rms_norm", "weight")?);
        let d = dims(l1, l2, "rms_norm")?;
        map_rows(x.len(), d, d, l1.shape(), |r, y| {
            cpu::rmsnorm_row(row(x, r, d), w, y, self.eps);
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rms_norm_fwd(s1, l1, s2, l2, self.eps)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        let dx = x.apply_op3_no_bwd(&w, &g, &RmsNormBwdX { eps: self.eps })?;
        let dw = x.apply_op2_no_bwd(&g, &RmsNormBwdW { eps: self.eps })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (x, w, dy) → dx
struct RmsNormBwdX {
    eps: f32,
}

impl CustomOp3 for RmsNormBwdX {
    fn name(&self) -> &'static str {
        "bunmind-rms-norm-bwd-x"
    }

    #[rustfmt::skip]
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "rms_norm bwd";
        let (x, w, g) = (f32_data(s1, l1, op, "x")?, f32_data(s2, l2, op, "weight")?, f32_data(s3, l3, op, "grad")?);
        let d = dims(l1, l2, op)?;
        same_shape(op, &[l1, l3])?;
        map_rows(x.len(), d, d, l1.shape(), |r, dx| cpu::rmsnorm_dx_row(row(x, r, d), w, self.eps, row(g, r, d), dx))
    }

    #[cfg(feature = "cuda")]
    #[rustfmt::skip]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rms_norm_bwd_x(s1, l1, s2, l2, s3, l3, self.eps)
    }
}

/// (x, dy) → dw = Σ_rows dy ⊙ x̂: fixed blocks of rows summed in parallel, then the block
/// partials in block order.
struct RmsNormBwdW {
    eps: f32,
}

impl CustomOp2 for RmsNormBwdW {
    fn name(&self) -> &'static str {
        "bunmind-rms-norm-bwd-w"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "rms_norm bwd";
        let (x, g) = (f32_data(s1, l1, op, "x")?, f32_data(s2, l2, op, "grad")?);
        same_shape(op, &[l1, l2])?;
        let d = super::row_len(l1, op)?;
        let block = d * DW_BLOCK_ROWS;
        let partials: Vec<Vec<f32>> = x
            .par_chunks(block)
            .zip(g.par_chunks(block))
            .map(|(xb, gb)| {
                let mut acc = vec![0f32; d];
                for (x, g) in xb.chunks(d).zip(gb.chunks(d)) {
                    cpu::rmsnorm_dw_row(x, self.eps, g, &mut acc);
                }
                acc
            })
            .collect();
        let mut dw = vec![0f32; d];
        for p in &partials {
            for (a, &v) in dw.iter_mut().zip(p) {
                *a += v;
            }
        }
        Ok((CpuStorage::F32(dw), Shape::from_dims(&[d])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rms_norm_bwd_w(s1, l1, s2, l2, self.eps)
    }
}

/// The op chain (differentiable everywhere): `x · (mean(x²) + eps)^(−1/2) · w`, computed in f32
/// whatever the input dtype (as MiniMind's `x.float()`), the result in x's dtype.
pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    if dt != DType::F32 && dt.is_float() {
        let y = rms_norm_reference(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?, eps)?;
        return Ok(y.to_dtype(dt)?);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Differentiable RMSNorm over the last dim (grads for x and w). Fused on CPU f32 and on CUDA
/// f32/bf16 (x and w of one dtype); the op chain elsewhere.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    // A bf16 x (autocast, e.g. QK-norm) meets an f32 gain: cast the gain (differentiably).
    let w = &if w.dtype() != x.dtype() { w.to_dtype(x.dtype())? } else { w.clone() };
    if fused_ok(x) && fused_ok(w) {
        return Ok(x.contiguous()?.apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })?);
    }
    rms_norm_reference(x, w, eps)
}
