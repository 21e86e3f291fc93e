//! Softmax over the last dim of `scale · x`, optionally causal, as one op with a backward that
//! keeps only its output: `dx = scale · y ⊙ (dy − Σ dy ⊙ y)`.
//!
//! Causal: view x as rows of length S; row r is query `i = r % t` at absolute position
//! `offset + i` and sees keys `j ≤ offset + i`; the others get probability exactly 0 (what the
//! additive −1e9 mask gave). `t` divides the row count, so `[B, KV, rep·T, S]` grouped-query
//! scores work as well as `[B, H, T, S]`.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, fused_ok, rows_per_task, uninit};
use crate::Result;

#[derive(Debug, Clone, Copy)]
pub struct ScaledSoftmax {
    pub scale: f32,
    /// (t, offset): see the module doc. None = plain softmax over every column.
    pub causal: Option<(usize, usize)>,
}

impl ScaledSoftmax {
    #[inline]
    fn valid(&self, row: usize, s: usize) -> usize {
        match self.causal {
            None => s,
            Some((t, off)) => (off + row % t + 1).min(s),
        }
    }

    fn check(&self, layout: &Layout) -> candle_core::Result<(usize, usize)> {
        let dims = layout.shape().dims();
        let s = *dims.last().unwrap_or(&0);
        if s == 0 {
            candle_core::bail!("softmax_scaled: empty last dim");
        }
        let rows = layout.shape().elem_count() / s;
        if let Some((t, _)) = self.causal {
            if t == 0 || rows % t != 0 {
                candle_core::bail!("softmax_scaled: causal block t={t} does not divide {rows} rows");
            }
        }
        Ok((rows, s))
    }
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "bunmind-softmax-scaled"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, "softmax_scaled", "input")?;
        let (_rows, s) = self.check(layout)?;
        let mut out = uninit(x.len());
        let rpt = rows_per_task(s);
        let scale = self.scale;
        out.par_chunks_mut(s * rpt).zip(x.par_chunks(s * rpt)).enumerate().for_each(|(blk, (yb, xb))| {
            for (k, (y, x)) in yb.chunks_mut(s).zip(xb.chunks(s)).enumerate() {
                let n = self.valid(blk * rpt + k, s);
                let (y, rest) = y.split_at_mut(n);
                rest.fill(0.0);
                let x = &x[..n];
                let mut max = f32::NEG_INFINITY;
                for (yi, &xi) in y.iter_mut().zip(x) {
                    *yi = xi * scale;
                    max = max.max(*yi);
                }
                let mut sum = 0f32;
                for yi in y.iter_mut() {
                    *yi = (*yi - max).exp();
                    sum += *yi;
                }
                for yi in y.iter_mut() {
                    *yi /= sum;
                }
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax_fwd(storage, layout, self.scale, self.causal)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&g, &SoftmaxBwd { fwd: *self })?))
    }
}

/// (y, dy) → dx = scale · y ⊙ (dy − Σ_row dy ⊙ y)
struct SoftmaxBwd {
    fwd: ScaledSoftmax,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "bunmind-softmax-scaled-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_data(s1, l1, "softmax_scaled bwd", "output")?;
        let g = f32_data(s2, l2, "softmax_scaled bwd", "grad")?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("softmax_scaled bwd: shape mismatch {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let (_rows, s) = self.fwd.check(l1)?;
        let mut out = uninit(y.len());
        let rpt = rows_per_task(s);
        let scale = self.fwd.scale;
        out.par_chunks_mut(s * rpt).zip(y.par_chunks(s * rpt).zip(g.par_chunks(s * rpt))).enumerate().for_each(
            |(blk, (db, (yb, gb)))| {
                for (k, ((d, y), g)) in db.chunks_mut(s).zip(yb.chunks(s)).zip(gb.chunks(s)).enumerate() {
                    let n = self.fwd.valid(blk * rpt + k, s);
                    let (d, rest) = d.split_at_mut(n);
                    rest.fill(0.0);
                    let (y, g) = (&y[..n], &g[..n]);
                    let mut dot = 0f32;
                    for (&yi, &gi) in y.iter().zip(g) {
                        dot += yi * gi;
                    }
                    for ((di, &yi), &gi) in d.iter_mut().zip(y).zip(g) {
                        *di = scale * yi * (gi - dot);
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax_bwd(s1, l1, s2, l2, self.fwd.scale, self.fwd.causal)
    }
}

/// [t, offset + t] additive causal mask (0 / −1e9), for the op-chain fallback.
pub fn causal_mask_tensor(t: usize, offset: usize, dev: &candle_core::Device) -> Result<Tensor> {
    crate::model::cache::causal_mask(t, offset, dev)
}

/// Differentiable `softmax(scale · x)` over the last dim, optionally causal (`(t, offset)`, see
/// the module doc). Fused on CPU f32 and CUDA f32/bf16; the exp/sum op chain with an additive
/// mask elsewhere.
pub fn softmax_scaled(x: &Tensor, scale: f64, causal: Option<(usize, usize)>) -> Result<Tensor> {
    if fused_ok(x) {
        let op = ScaledSoftmax { scale: scale as f32, causal };
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    if let Some((t, off)) = causal {
        let s = x.dims().last().copied().unwrap_or(0);
        let rows = x.elem_count() / s.max(1);
        if s != off + t || t == 0 || rows % t != 0 {
            return Err(crate::Error::input(format!(
                "softmax_scaled: causal (t={t}, offset={off}) does not fit scores {:?}",
                x.dims()
            )));
        }
    }
    softmax_scaled_reference(x, scale, causal)
}

/// The op-chain reference (always unfused), for tests and non-CPU devices.
pub fn softmax_scaled_reference(x: &Tensor, scale: f64, causal: Option<(usize, usize)>) -> Result<Tensor> {
    let xs = (x * scale)?;
    let xs = match causal {
        None => xs,
        Some((t, off)) => {
            let dims = xs.dims().to_vec();
            let s = dims[dims.len() - 1];
            let rows = xs.elem_count() / s;
            let m = causal_mask_tensor(t, off, x.device())?.to_dtype(xs.dtype())?;
            xs.reshape((rows / t, t, s))?.broadcast_add(&m)?.reshape(dims)?
        }
    };
    crate::model::attention::softmax_train(&xs)
}
