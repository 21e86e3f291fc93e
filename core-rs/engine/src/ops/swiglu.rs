//! SwiGLU gate `silu(g) ⊙ u` as one op: backward `dg = dy ⊙ u ⊙ σ(g)(1 + g(1 − σ(g)))`,
//! `du = dy ⊙ silu(g)` (σ recomputed from g).
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, fused_ok, uninit};
use crate::Result;

const CHUNK: usize = 1 << 14;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "bunmind-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_data(s1, l1, "swiglu", "gate")?;
        let u = f32_data(s2, l2, "swiglu", "up")?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ in shape", l1.shape(), l2.shape());
        }
        let mut out = uninit(g.len());
        out.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(o, (g, u))| {
            for ((oi, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
                *oi = gi / (1.0 + (-gi).exp()) * ui; // candle's silu, times u
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_data(s1, l1, "swiglu bwd", "gate")?;
        let u = f32_data(s2, l2, "swiglu bwd", "up")?;
        let dy = f32_data(s3, l3, "swiglu bwd", "grad")?;
        if l1.shape() != l2.shape() || l1.shape() != l3.shape() {
            candle_core::bail!("swiglu bwd: shape mismatch");
        }
        let mut out = uninit(g.len());
        let wrt_gate = self.wrt_gate;
        out.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))).for_each(
            |(o, (g, (u, dy)))| {
                for (((oi, &gi), &ui), &di) in o.iter_mut().zip(g).zip(u).zip(dy) {
                    let s = sigmoid(gi);
                    *oi = if wrt_gate { di * ui * (s * (1.0 + gi * (1.0 - s))) } else { di * gi * s };
                }
            },
        );
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
