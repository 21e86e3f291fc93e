//! Softmax over the last dim of `scale · x`, optionally causal, as one op with a backward that
//! keeps only its output: `dx = scale · y ⊙ (dy − Σ dy ⊙ y)`.
//!
//! Causal: view x as rows of length S; row r is query `i = r % t` at absolute position
//! `offset + i` and sees keys `j ≤ offset + i`; the others get probability exactly 0 (what the
//! additive −1e9 mask gave). `t` divides the row count, so `[B, KV, rep·T, S]` grouped-query
//! scores work as well as `[B, H, T, S]`. CPU arithmetic: [`cpu::softmax_row`],
//! [`cpu::softmax_bwd_row`] (the rows the hand-written step's attention runs).
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::{cpu, f32_data, fused_ok, map_rows, row, same_shape};
use crate::Result;

#[derive(Debug, Clone, Copy)]
pub struct ScaledSoftmax {
    pub scale: f32,
    /// (t, offset): see the module doc. None = plain softmax over every column.
    pub causal: Option<(usize, usize)>,
}

impl ScaledSoftmax {
    /// How many leading columns of row `row` (of `s`) are visible.
    #[inline]
    fn valid(&self, row: usize, s: usize) -> usize {
        match self.causal {
            None => s,
            Some((t, off)) => (off + row % t + 1).min(s),
        }
    }

    /// The row length S, checking that the causal block divides the rows.
    fn check(&self, layout: &Layout) -> candle_core::Result<usize> {
        let s = super::row_len(layout, "softmax_scaled")?;
        let rows = layout.shape().elem_count() / s;
        if let Some((t, _)) = self.causal {
            if t == 0 || rows % t != 0 {
                candle_core::bail!("softmax_scaled: causal block t={t} does not divide {rows} rows");
            }
        }
        Ok(s)
    }
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "bunmind-softmax-scaled"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, "softmax_scaled", "input")?;
        let s = self.check(layout)?;
        // The kernel shifts by the row's max before scaling, which needs scale ≥ 0:
        // softmax(scale·x) = softmax(|scale|·(−x)).
        let flip = self.scale < 0.0;
        map_rows(x.len(), s, s, layout.shape(), |r, y| {
            let n = self.valid(r, s);
            let x = &row(x, r, s)[..n];
            if flip {
                y[..n].iter_mut().zip(x).for_each(|(yi, &xi)| *yi = -xi);
            } else {
                y[..n].copy_from_slice(x);
            }
            cpu::softmax_row(y, n, self.scale.abs());
        })
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
        let op = "softmax_scaled bwd";
        let (y, g) = (f32_data(s1, l1, op, "output")?, f32_data(s2, l2, op, "grad")?);
        same_shape(op, &[l1, l2])?;
        let s = self.fwd.check(l1)?;
        map_rows(y.len(), s, s, l1.shape(), |r, dx| {
            let n = self.fwd.valid(r, s);
            dx[..n].copy_from_slice(&row(g, r, s)[..n]);
            cpu::softmax_bwd_row(row(y, r, s), dx, n, self.fwd.scale);
        })
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
