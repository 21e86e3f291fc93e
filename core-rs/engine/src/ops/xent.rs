//! `log p(target)` per position from logits over the last dim, as one op:
//! forward `x[t] − logsumexp(x)` per row (no [.., V] temporaries), backward
//! `dx = dy · (onehot(t) − softmax(x))` (the row's log-sum-exp is recomputed).
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, fused_ok, rows_per_task, uninit};
use crate::Result;

fn u32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [u32]> {
    let CpuStorage::U32(d) = s else {
        candle_core::bail!("{op}: targets must be u32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{op}: targets must be contiguous"),
    }
}

/// (max, log Σ exp(x − max)) of a row, summed left to right.
#[inline]
fn row_lse(x: &[f32]) -> f32 {
    let mut max = f32::NEG_INFINITY;
    for &v in x {
        max = max.max(v);
    }
    let mut sum = 0f32;
    for &v in x {
        sum += (v - max).exp();
    }
    sum.ln() + max
}

fn check(l1: &Layout, l2: &Layout, op: &str) -> candle_core::Result<usize> {
    let d = l1.shape().dims();
    let v = *d.last().unwrap_or(&0);
    if v == 0 || l2.shape().dims() != &d[..d.len() - 1] {
        candle_core::bail!("{op}: targets {:?} must be logits {:?} without the last dim", l2.shape(), l1.shape());
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy)]
pub struct TokenLogProb;

impl CustomOp2 for TokenLogProb {
    fn name(&self) -> &'static str {
        "bunmind-token-logprob"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "token_logprobs", "logits")?;
        let t = u32_data(s2, l2, "token_logprobs")?;
        let v = check(l1, l2, "token_logprobs")?;
        if let Some(&bad) = t.iter().find(|&&id| id as usize >= v) {
            candle_core::bail!("token_logprobs: target {bad} out of range for {v} classes");
        }
        let mut out = uninit(t.len());
        out.par_iter_mut().zip(x.par_chunks(v).zip(t.par_iter())).with_min_len(rows_per_task(v)).for_each(|(o, (x, &id))| {
            *o = x[id as usize] - row_lse(x);
        });
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::xent_fwd(s1, l1, s2, l2)
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // [..., 2]: (log p(target), dy) per row
        let lp_dy = Tensor::stack(&[res, grad], candle_core::D::Minus1)?.contiguous()?;
        let dx = logits.contiguous()?.apply_op3_no_bwd(&targets.contiguous()?, &lp_dy, &TokenLogProbBwd)?;
        Ok((Some(dx), None))
    }
}

/// (logits, targets, [log p(target), dy]) → dy · (onehot − softmax), with the softmax as
/// `exp(x − lse)` and `lse = x[target] − log p(target)` (no second log-sum-exp pass)
struct TokenLogProbBwd;

impl CustomOp3 for TokenLogProbBwd {
    fn name(&self) -> &'static str {
        "bunmind-token-logprob-bwd"
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
        let x = f32_data(s1, l1, "token_logprobs bwd", "logits")?;
        let t = u32_data(s2, l2, "token_logprobs bwd")?;
        let g = f32_data(s3, l3, "token_logprobs bwd", "grad")?;
        let v = check(l1, l2, "token_logprobs bwd")?;
        if l3.shape().elem_count() != 2 * l2.shape().elem_count() {
            candle_core::bail!("token_logprobs bwd: [logp, grad] {:?} does not match targets {:?}", l3.shape(), l2.shape());
        }
        let mut out = uninit(x.len());
        out.par_chunks_mut(v).zip(x.par_chunks(v).zip(t.par_iter().zip(g.par_chunks(2)))).with_min_len(rows_per_task(v)).for_each(
            |(d, (x, (&id, lg)))| {
                let (lp, gi) = (lg[0], lg[1]);
                if gi == 0.0 {
                    d.fill(0.0); // masked position: zero gradient
                    return;
                }
                let lse = x[id as usize] - lp; // the forward's log-sum-exp, from its output
                for (di, &xi) in d.iter_mut().zip(x) {
                    *di = -gi * (xi - lse).exp();
                }
                d[id as usize] += gi;
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
        super::cuda::xent_bwd(s1, l1, s2, l2, s3, l3)
    }
}

/// Differentiable `log softmax(logits)[target]` over the last dim: logits [..., V] (f32 on CPU,
/// f32 or bf16 on CUDA), targets [...] u32 on the same device → [...] f32. None when the fused
/// op does not apply (caller uses the op chain).
pub fn token_logprobs_fused(logits: &Tensor, targets: &Tensor) -> Result<Option<Tensor>> {
    if !fused_ok(logits) || !targets.device().same_device(logits.device()) || targets.dtype() != candle_core::DType::U32 {
        return Ok(None);
    }
    Ok(Some(logits.contiguous()?.apply_op2(&targets.contiguous()?, TokenLogProb)?))
}
