//! Global-norm gradient clipping with PyTorch's `clip_grad_norm_` semantics.
use candle_core::{backprop::GradStore, CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, Var};
use rayon::prelude::*;

use crate::Result;

/// L2 norm over the gradients of `vars` taken together (vars without a gradient are skipped).
/// Each tensor's sum of squares is taken in f64 on its device; one host sync in total.
pub fn global_grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut parts = Vec::new();
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            if g.device().is_cpu() && g.dtype() == DType::F32 {
                // one pass over the f32 data, squares summed in f64 (no f64 copy of the tensor)
                parts.push(g.contiguous()?.apply_op1_no_bwd(&SumSquaresF64)?);
            } else {
                parts.push(g.to_dtype(DType::F64)?.sqr()?.sum_all()?);
            }
        }
    }
    if parts.is_empty() {
        return Ok(0.0);
    }
    Ok(Tensor::stack(&parts, 0)?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

/// Scales the gradients of `vars` in `grads` so that their global L2 norm is at most `max_norm`:
/// `coef = min(1, max_norm / (norm + 1e-6))`, applied only when `coef < 1`. Returns the norm before
/// clipping (what upstream logs). A non-finite norm is returned as-is and the grads are left alone;
/// the caller decides whether to skip the step.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads, vars)?;
    if !norm.is_finite() {
        return Ok(norm);
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale_grads(grads, vars, coef)?;
    }
    Ok(norm)
}

/// Multiplies the gradients of `vars` by `factor` in place (in the grad's own dtype).
pub fn scale_grads(grads: &mut GradStore, vars: &[Var], factor: f64) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            grads.insert(v.as_tensor(), (g * factor)?);
        }
    }
    Ok(())
}

/// Σ x² of a contiguous f32 tensor as an f64 scalar: each square and sum in f64, over fixed
/// blocks summed in block order (deterministic for any thread count).
struct SumSquaresF64;

impl CustomOp1 for SumSquaresF64 {
    fn name(&self) -> &'static str {
        "sum-squares-f64"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(d) = s else { candle_core::bail!("sum-squares-f64: expected f32") };
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("sum-squares-f64: expected contiguous") };
        let parts: Vec<f64> = d[a..b]
            .par_chunks(1 << 14)
            .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .collect();
        Ok((CpuStorage::F64(vec![parts.iter().sum()]), Shape::from(())))
    }
}
