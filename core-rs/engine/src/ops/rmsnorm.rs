//! RMSNorm `y = w ⊙ x / sqrt(mean(x²) + eps)` over the last dim, with gradients for x and w.
//!
//! Backward (per row, x̂ = x·inv, inv = 1/sqrt(mean(x²) + eps), n = row length):
//! `dx = inv · (dy⊙w − x̂ · Σ(dy⊙w⊙x̂) / n)`, `dw = Σ_rows dy ⊙ x̂`.
//! The row statistic is recomputed in the backward (one pass over the row) instead of stored.
//! `dw` sums fixed blocks of rows in parallel and then the block partials in block order.
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_data, fused_ok, rows_per_task, uninit};
use crate::Result;

/// Rows per partial sum of the weight gradient (fixed: the result does not depend on threads).
const DW_BLOCK_ROWS: usize = 64;

#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    1.0 / (s / x.len() as f32 + eps).sqrt()
}

fn dims(l: &Layout, w: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
    let d = *l.shape().dims().last().unwrap_or(&0);
    if d == 0 || w.shape().dims() != [d] {
        candle_core::bail!("{op}: weight must be [{d}] (the last dim of x), got {:?}", w.shape());
    }
    Ok((l.shape().elem_count() / d, d))
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
        let x = f32_data(s1, l1, "rms_norm", "x")?;
        let w = f32_data(s2, l2, "rms_norm", "weight")?;
        let (_rows, d) = dims(l1, l2, "rms_norm")?;
        let mut out = uninit(x.len());
        let rpt = rows_per_task(d);
        let eps = self.eps;
        out.par_chunks_mut(d * rpt).zip(x.par_chunks(d * rpt)).for_each(|(yb, xb)| {
            for (y, x) in yb.chunks_mut(d).zip(xb.chunks(d)) {
                let inv = inv_rms(x, eps);
                for ((yi, &xi), &wi) in y.iter_mut().zip(x).zip(w) {
                    *yi = xi * inv * wi;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "rms_norm bwd", "x")?;
        let w = f32_data(s2, l2, "rms_norm bwd", "weight")?;
        let g = f32_data(s3, l3, "rms_norm bwd", "grad")?;
        let (_rows, d) = dims(l1, l2, "rms_norm bwd")?;
        if l3.shape() != l1.shape() {
            candle_core::bail!("rms_norm bwd: grad shape {:?} != x shape {:?}", l3.shape(), l1.shape());
        }
        let mut out = uninit(x.len());
        let rpt = rows_per_task(d);
        let eps = self.eps;
        out.par_chunks_mut(d * rpt).zip(x.par_chunks(d * rpt).zip(g.par_chunks(d * rpt))).for_each(|(db, (xb, gb))| {
            for ((dx, x), g) in db.chunks_mut(d).zip(xb.chunks(d)).zip(gb.chunks(d)) {
                let inv = inv_rms(x, eps);
                let mut dot = 0f32; // Σ dy·w·x̂
                for ((&xi, &gi), &wi) in x.iter().zip(g).zip(w) {
                    dot += gi * wi * xi * inv;
                }
                let c = dot / d as f32;
                for (((di, &xi), &gi), &wi) in dx.iter_mut().zip(x).zip(g).zip(w) {
                    *di = inv * (gi * wi - xi * inv * c);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rms_norm_bwd_x(s1, l1, s2, l2, s3, l3, self.eps)
    }
}

/// (x, dy) → dw = Σ_rows dy ⊙ x̂
struct RmsNormBwdW {
    eps: f32,
}

impl CustomOp2 for RmsNormBwdW {
    fn name(&self) -> &'static str {
        "bunmind-rms-norm-bwd-w"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "rms_norm bwd", "x")?;
        let g = f32_data(s2, l2, "rms_norm bwd", "grad")?;
        if l2.shape() != l1.shape() {
            candle_core::bail!("rms_norm bwd: grad shape {:?} != x shape {:?}", l2.shape(), l1.shape());
        }
        let d = *l1.shape().dims().last().unwrap_or(&0);
        if d == 0 {
            candle_core::bail!("rms_norm bwd: empty last dim");
        }
        let eps = self.eps;
        let partials: Vec<Vec<f32>> = x
            .par_chunks(d * DW_BLOCK_ROWS)
            .zip(g.par_chunks(d * DW_BLOCK_ROWS))
            .map(|(xb, gb)| {
                let mut acc = vec![0f32; d];
                for (x, g) in xb.chunks(d).zip(gb.chunks(d)) {
                    let inv = inv_rms(x, eps);
                    for ((a, &xi), &gi) in acc.iter_mut().zip(x).zip(g) {
                        *a += gi * xi * inv;
                    }
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
