//! SwiGLU gate `silu(g) ⊙ u` as one op: backward `dg = dy ⊙ u ⊙ σ(g)(1 + g(1 − σ(g)))`,
//! `du = dy ⊙ silu(g)` (σ recomputed from g). CPU arithmetic: [`cpu::swiglu_fwd`] and friends.
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{cpu, f32_data, fused_ok, map_rows, same_shape};
use crate::Result;

/// Elements per kernel call (an elementwise op: any split gives the same result).
const CHUNK: usize = 1 << 14;

/// Elements `[r·CHUNK, r·CHUNK + len)` of `x`: the inputs of output chunk `r` of length `len`.
fn chunk(x: &[f32], r: usize, len: usize) -> &[f32] {
    &x[r * CHUNK..r * CHUNK + len]
}

#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "bunmind-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_data(s1, l1, "swiglu", "gate")?, f32_data(s2, l2, "swiglu", "up")?);
        same_shape("swiglu", &[l1, l2])?;
        map_rows(g.len(), CHUNK, CHUNK, l1.shape(), |r, a| cpu::swiglu_fwd(chunk(g, r, a.len()), chunk(u, r, a.len()), a))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::swiglu_fwd(s1, l1, s2, l2)
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, dy) = (g.contiguous()?, u.contiguous()?, dy.contiguous()?);
        let dg = g.apply_op3_no_bwd(&u, &dy, &SwiGluBwd { wrt_gate: true })?;
        let du = g.apply_op3_no_bwd(&u, &dy, &SwiGluBwd { wrt_gate: false })?;
        Ok((Some(dg), Some(du)))
    }
}

/// (g, u, dy) → dg or du
struct SwiGluBwd {
    wrt_gate: bool,
}

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "bunmind-swiglu-bwd"
    }

    #[rustfmt::skip]
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "swiglu bwd";
        let (g, u, dy) = (f32_data(s1, l1, op, "gate")?, f32_data(s2, l2, op, "up")?, f32_data(s3, l3, op, "grad")?);
        same_shape(op, &[l1, l2, l3])?;
        map_rows(g.len(), CHUNK, CHUNK, l1.shape(), |r, o| {
            let (g, d) = (chunk(g, r, o.len()), chunk(dy, r, o.len()));
            if self.wrt_gate {
                cpu::swiglu_bwd_gate(g, chunk(u, r, o.len()), d, o)
            } else {
                cpu::swiglu_bwd_up(g, d, o)
            }
        })
    }

    #[cfg(feature = "cuda")]
    #[rustfmt::skip]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::swiglu_bwd(s1, l1, s2, l2, s3, l3, self.wrt_gate)
    }
}

/// Differentiable `silu(g) ⊙ u`: fused on CPU f32 and CUDA f32/bf16, candle ops elsewhere.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if fused_ok(g) && fused_ok(u) && g.shape() == u.shape() && g.dtype() == u.dtype() {
        return Ok(g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)?);
    }
    swiglu_reference(g, u)
}

pub fn swiglu_reference(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    Ok((g.silu()? * u)?)
}
