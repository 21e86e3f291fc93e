//! Rotary embedding on `[B, T, H, D]` (the projections' natural layout) as one op, with the
//! backward `dx = R(−θ) dy` (the same rotation with sin negated).
//! Rotate-half pairs `(x_i, x_{i+D/2})` or interleaved pairs `(x_{2i}, x_{2i+1})`; cos/sin `[T, D/2]`.
//! CPU arithmetic: [`cpu::rope_row`] (the row the hand-written step runs).
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::{cpu, f32_data, fused_ok, map_rows, row};
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

    #[rustfmt::skip]
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (f32_data(s1, l1, "rope", "x")?, f32_data(s2, l2, "rope", "cos")?, f32_data(s3, l3, "rope", "sin")?);
        let (_b, t, h, d) = l1.shape().dims4()?;
        let half = d / 2;
        if d % 2 != 0 || l2.shape().dims() != [t, half] || l3.shape().dims() != [t, half] {
            candle_core::bail!("rope: x {:?} needs cos/sin [{t}, {half}], got {:?} / {:?}", l1.shape(), l2.shape(), l3.shape());
        }
        let sign = if self.inverse { -1f32 } else { 1f32 };
        // One row per (b, t, h) head vector, at position t.
        map_rows(x.len(), d, d, l1.shape(), |r, y| {
            let pos = (r / h) % t;
            y.copy_from_slice(row(x, r, d));
            cpu::rope_row(y, row(cos, pos, half), row(sin, pos, half), self.interleaved, sign);
        })
    }

    #[cfg(feature = "cuda")]
    #[rustfmt::skip]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
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
