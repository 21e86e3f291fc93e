//! Rotary embedding on `[B, T, H, D]` (the projections' natural layout) as one op, with the
//! backward `dx = R(−θ) dy` (the same rotation with sin negated).
//! Rotate-half pairs `(x_i, x_{i+D/2})` or interleaved pairs `(x_{2i}, x_{2i+1})`; cos/sin `[T, D/2]`.
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, fused_ok, rows_per_task, uninit};
use crate::Result;

#[derive(Debug, Clone, Copy)]
pub struct RopeOp {
    pub interleaved: bool,
    /// Rotate by −θ (the backward).
    pub inverse: bool,
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "bunmind-rope-bthd"
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
        let x = f32_data(s1, l1, "rope", "x")?;
        let cos = f32_data(s2, l2, "rope", "cos")?;
        let sin = f32_data(s3, l3, "rope", "sin")?;
        let (_b, t, h, d) = l1.shape().dims4()?;
        let half = d / 2;
        if d % 2 != 0 || l2.shape().dims() != [t, half] || l3.shape().dims() != [t, half] {
            candle_core::bail!("rope: x {:?} needs cos/sin [{t}, {half}], got {:?} / {:?}", l1.shape(), l2.shape(), l3.shape());
        }
        let mut out = uninit(x.len());
        let rpt = rows_per_task(d);
        let sgn = if self.inverse { -1f32 } else { 1f32 };
        let interleaved = self.interleaved;
        out.par_chunks_mut(d * rpt).zip(x.par_chunks(d * rpt)).enumerate().for_each(|(blk, (yb, xb))| {
            for (k, (y, x)) in yb.chunks_mut(d).zip(xb.chunks(d)).enumerate() {
                let pos = ((blk * rpt + k) / h) % t;
                let c = &cos[pos * half..(pos + 1) * half];
                let s = &sin[pos * half..(pos + 1) * half];
                if interleaved {
                    for i in 0..half {
                        let (xe, xo, si) = (x[2 * i], x[2 * i + 1], sgn * s[i]);
                        y[2 * i] = xe * c[i] - xo * si;
                        y[2 * i + 1] = xe * si + xo * c[i];
                    }
                } else {
                    let (x1, x2) = x.split_at(half);
                    let (y1, y2) = y.split_at_mut(half);
                    for i in 0..half {
                        let si = sgn * s[i];
                        y1[i] = x1[i] * c[i] - x2[i] * si;
                        y2[i] = x2[i] * c[i] + x1[i] * si;
                    }
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
        super::cuda::rope(s1, l1, s2, l2, s3, l3, self.interleaved, self.inverse)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inv = RopeOp { interleaved: self.interleaved, inverse: !self.inverse };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &inv)?;
        Ok((Some(dx), None, None))
    }
}

/// Differentiable rotation of x `[B, T, H, D]` by the angles of cos/sin `[T, D/2]`; fused on
/// CPU f32 and on CUDA (x f32 or bf16, tables f32). Returns None when the fused op does not
/// apply (the caller uses its op chain).
pub fn rope_bthd(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Option<Tensor>> {
    let f32_tables = cos.dtype() == candle_core::DType::F32 && sin.dtype() == candle_core::DType::F32;
    if !(fused_ok(x) && fused_ok(cos) && fused_ok(sin) && f32_tables) {
        return Ok(None);
    }
    let op = RopeOp { interleaved, inverse: false };
    Ok(Some(x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)?))
}
