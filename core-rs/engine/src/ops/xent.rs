//! `log p(target)` per position from logits over the last dim, as one op:
//! forward `x[t] − logsumexp(x)` per row (no [.., V] temporaries), backward
//! `dx = dy · (onehot(t) − softmax(x))` (the row's log-sum-exp is recomputed). CPU arithmetic:
//! [`cpu::logprob_row`] and [`cpu::xent_row`] (the step's fused cross-entropy row).
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{cpu, data, f32_data, fused_ok, map_rows, row};
use crate::Result;

/// The vocabulary size V, checking that targets are the logits' shape without the last dim and
/// every target is `< V`.
fn check(l1: &Layout, l2: &Layout, targets: &[u32], op: &str) -> candle_core::Result<usize> {
    let v = super::row_len(l1, op)?;
    let d = l1.shape().dims();
    if l2.shape().dims() != &d[..d.len() - 1] {
        candle_core::bail!("{op}: targets {:?} must be logits {:?} without the last dim", l2.shape(), l1.shape());
    }
    if let Some(&bad) = targets.iter().find(|&&id| id as usize >= v) {
        candle_core::bail!("{op}: target {bad} out of range for {v} classes");
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
        let (x, t) = (f32_data(s1, l1, "token_logprobs", "logits")?, data::<u32>(s2, l2, "token_logprobs", "targets")?);
        let v = check(l1, l2, t, "token_logprobs")?;
        map_rows(t.len(), 1, v, l2.shape(), |r, o| o[0] = cpu::logprob_row(row(x, r, v), t[r] as usize))
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

/// (logits, targets, [log p(target), dy]) → dy · (onehot − softmax). On CUDA the softmax is
/// `exp(x − lse)` with `lse = x[target] − log p(target)` (no second log-sum-exp pass); on the CPU
/// each row is [`cpu::xent_row`] — the hand-written step's fused loss + gradient row, which
/// recomputes the log-sum-exp — times −dy.
struct TokenLogProbBwd;

impl CustomOp3 for TokenLogProbBwd {
    fn name(&self) -> &'static str {
        "bunmind-token-logprob-bwd"
    }

    #[rustfmt::skip]
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "token_logprobs bwd";
        let (x, t, g) = (f32_data(s1, l1, op, "logits")?, data::<u32>(s2, l2, op, "targets")?, f32_data(s3, l3, op, "grad")?);
        let v = check(l1, l2, t, op)?;
        if l3.shape().elem_count() != 2 * t.len() {
            candle_core::bail!("{op}: [logp, grad] {:?} does not match targets {:?}", l3.shape(), l2.shape());
        }
        map_rows(x.len(), v, v, l1.shape(), |r, dx| {
            let dy = g[2 * r + 1];
            if dy == 0.0 {
                dx.fill(0.0); // masked position: zero gradient
                return;
            }
            dx.copy_from_slice(row(x, r, v));
            cpu::xent_row(dx, t[r] as usize); // softmax − onehot
            dx.iter_mut().for_each(|d| *d *= -dy);
        })
    }

    #[cfg(feature = "cuda")]
    #[rustfmt::skip]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
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
