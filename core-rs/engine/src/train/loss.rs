//! Training losses built only from differentiable ops (candle's fused softmax drops gradients;
//! on CPU f32 the token log-probs use [`crate::ops::token_logprobs_fused`], which has a backward).
//!
//! Shapes: `logits [B, T, V]` (any float dtype; computed in f32 when half precision),
//! `targets [B, T]` u32, `mask [B, T]` float. A position counts when `mask > 0`; counted positions
//! have weight 1 (the mask is an indicator, as upstream's 0/1 `loss_mask`).
use candle_core::{DType, Tensor, D};

use crate::{Error, Result};

/// Half-precision logits are upcast: log-sum-exp in bf16 loses the small probabilities.
fn as_f32(x: &Tensor) -> Result<Tensor> {
    Ok(match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    })
}

fn check_shapes(what: &str, logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<(usize, usize, usize)> {
    let (b, t, v) = logits
        .dims3()
        .map_err(|_| Error::input(format!("{what}: logits must be [B, T, V], got {:?}", logits.shape())))?;
    if targets.dims() != [b, t] {
        return Err(Error::input(format!("{what}: targets must be [{b}, {t}] like logits, got {:?}", targets.shape())));
    }
    if targets.dtype() != DType::U32 {
        return Err(Error::input(format!("{what}: targets must be u32, got {:?}", targets.dtype())));
    }
    if mask.dims() != [b, t] {
        return Err(Error::input(format!("{what}: mask must be [{b}, {t}] like logits, got {:?}", mask.shape())));
    }
    Ok((b, t, v))
}

/// Numerically stable `log Σ exp(x)` over the last dim, keepdim: `max + log Σ exp(x − max)` with
/// `max` detached (the result's gradient does not depend on the shift).
pub fn logsumexp_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let lse = x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(lse.broadcast_add(&max)?)
}

/// Stable log-softmax over the last dim: `x − max − log Σ exp(x − max)`, `max` detached.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// `log p(target)` at every position, `[B, T]` f32. Computed as `x[target] − logsumexp(x)`,
/// which never materialises the full `[B, T, V]` log-softmax.
/// On CPU f32 this is one fused op ([`crate::ops::token_logprobs_fused`]) with its own backward.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    // CUDA takes bf16 logits as they are (f32 math inside, f32 out): no f32 copy of [.., V].
    if logits.dtype() == DType::BF16 && logits.device().is_cuda() {
        if let Some(lp) = crate::ops::token_logprobs_fused(logits, targets)? {
            return Ok(lp);
        }
    }
    let logits = as_f32(logits)?;
    if let Some(lp) = crate::ops::token_logprobs_fused(&logits, targets)? {
        return Ok(lp);
    }
    token_logprobs_reference(&logits, targets)
}

/// [`token_logprobs`] from candle ops only (gather and a composed log-sum-exp).
pub fn token_logprobs_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = as_f32(logits)?;
    let picked = logits.gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?;
    Ok(picked.broadcast_sub(&logsumexp_last(&logits)?)?.squeeze(D::Minus1)?)
}

/// Mask as f32 0/1 on the logits' device.
fn indicator(mask: &Tensor) -> Result<Tensor> {
    Ok(mask.to_dtype(DType::F32)?.gt(0.0)?.to_dtype(DType::F32)?)
}

/// Summed masked cross-entropy and its token count, for gradient accumulation with a global
/// token count: `loss = Σ_micro sum / Σ_micro count`.
#[derive(Debug, Clone)]
pub struct MaskedLossSum {
    /// Scalar, differentiable: Σ over counted positions of −log p(target).
    pub sum: Tensor,
    /// Number of counted positions (mask > 0).
    pub count: usize,
}

pub fn masked_cross_entropy_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<MaskedLossSum> {
    check_shapes("masked_cross_entropy", logits, targets, mask)?;
    let w = indicator(mask)?;
    let nll = token_logprobs(logits, targets)?.neg()?;
    let sum = (nll * &w)?.sum_all()?;
    let count = w.sum_all()?.to_scalar::<f32>()? as usize;
    Ok(MaskedLossSum { sum, count })
}

/// Mean of −log p(target) over positions where `mask > 0`. Errors when no position counts
/// (a batch of pure padding would otherwise give NaN).
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let MaskedLossSum { sum, count } = masked_cross_entropy_sum(logits, targets, mask)?;
    if count == 0 {
        return Err(Error::input("masked_cross_entropy: the mask selects no position (all padding?)"));
    }
    Ok((sum / count as f64)?)
}

/// Σ over masked positions of log p(target), per sequence: `[B]` f32 (DPO's sequence score).
pub fn sequence_logprobs(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    check_shapes("sequence_logprobs", logits, targets, mask)?;
    Ok((token_logprobs(logits, targets)? * indicator(mask)?)?.sum(D::Minus1)?)
}

/// `−log σ(z) = softplus(−z)`, elementwise, stable for any `z`, with the exact gradient
/// `σ(z) − 1` everywhere, z = 0 included.
///
/// Written as `(|z| − z)/2 + log(1 + exp(−|z|))`. The usual `relu(−z) + log(1 + exp(−|z|))` has
/// the same value, but autograd takes one-sided slopes of `relu` and `|·|` at 0 that do not
/// cancel (candle: −1.5 instead of −0.5). Here both kinks come from the same `|z|`, whose slope
/// `s` at 0 enters as `s/2 − s/2`: the result is −1/2 whatever `s` is.
pub fn neg_log_sigmoid(z: &Tensor) -> Result<Tensor> {
    let a = z.abs()?;
    let half_relu = ((&a - z)? * 0.5)?;
    Ok((half_relu + (a.neg()?.exp()? + 1.0)?.log()?)?)
}

/// DPO batch metrics (host values, for logging).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DpoMetrics {
    /// mean β·(πc − rc)
    pub chosen_reward: f64,
    /// mean β·(πr − rr)
    pub rejected_reward: f64,
    /// mean of chosen − rejected reward
    pub reward_margin: f64,
    /// fraction of pairs with chosen reward > rejected reward
    pub accuracy: f64,
}

/// DPO loss `mean_b −log σ(β·((πc − πr) − (rc − rr)))`. All inputs `[B]` sequence log-probs
/// (see [`sequence_logprobs`]); the reference ones are detached here whatever the caller passes.
/// `−log σ(z)` is [`neg_log_sigmoid`]: stable for any z, and its gradient is exact at z = 0,
/// where every pair sits at step 1 when the reference is the starting policy.
pub fn dpo_loss(
    pi_chosen: &Tensor,
    pi_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    beta: f64,
) -> Result<(Tensor, DpoMetrics)> {
    let n = pi_chosen.dims1().map_err(|_| Error::input("dpo_loss: log-probs must be [B]"))?;
    for (name, t) in [("pi_rejected", pi_rejected), ("ref_chosen", ref_chosen), ("ref_rejected", ref_rejected)] {
        if t.dims() != [n] {
            return Err(Error::input(format!("dpo_loss: {name} must be [{n}], got {:?}", t.shape())));
        }
    }
    if n == 0 {
        return Err(Error::input("dpo_loss: empty batch"));
    }
    let (pc, pr) = (as_f32(pi_chosen)?, as_f32(pi_rejected)?);
    let (rc, rr) = (as_f32(ref_chosen)?.detach(), as_f32(ref_rejected)?.detach());
    let z = ((pc.sub(&pr)? - rc.sub(&rr)?)? * beta)?;
    let loss = neg_log_sigmoid(&z)?.mean_all()?;

    let chosen = ((pc.detach() - &rc)? * beta)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let rejected = ((pr.detach() - &rr)? * beta)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let nf = n as f64;
    let metrics = DpoMetrics {
        chosen_reward: chosen.iter().sum::<f64>() / nf,
        rejected_reward: rejected.iter().sum::<f64>() / nf,
        reward_margin: chosen.iter().zip(&rejected).map(|(c, r)| c - r).sum::<f64>() / nf,
        accuracy: chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count() as f64 / nf,
    };
    Ok((loss, metrics))
}

/// Distillation loss parts; `loss` is the one to backpropagate.
#[derive(Debug, Clone)]
pub struct DistillLoss {
    /// α·ce + (1 − α)·T²·kl
    pub loss: Tensor,
    /// masked-mean cross-entropy of the student on the targets
    pub ce: Tensor,
    /// masked-mean KL(softmax(teacher/T) ‖ softmax(student/T)), without the T² factor
    pub kl: Tensor,
}

/// Knowledge distillation as MiniMind's `train_distillation.py`: `α·CE + (1−α)·T²·KL`, KL summed over
/// the vocabulary and averaged over masked positions (PyTorch `kl_div(..., "batchmean")` on the
/// masked rows). The teacher is detached; a teacher with a larger vocabulary is cut to the student's.
pub fn distill_loss(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    alpha: f64,
    temperature: f64,
) -> Result<DistillLoss> {
    let (b, t, v) = check_shapes("distill_loss", student_logits, targets, mask)?;
    let (tb, tt, tv) = teacher_logits
        .dims3()
        .map_err(|_| Error::input(format!("distill_loss: teacher logits must be [B, T, V], got {:?}", teacher_logits.shape())))?;
    if (tb, tt) != (b, t) || tv < v {
        return Err(Error::input(format!(
            "distill_loss: teacher logits {:?} do not cover student logits {:?}",
            teacher_logits.shape(),
            student_logits.shape()
        )));
    }
    if temperature.is_nan() || temperature <= 0.0 {
        return Err(Error::input(format!("distill_loss: temperature must be > 0, got {temperature}")));
    }
    let MaskedLossSum { sum, count } = masked_cross_entropy_sum(student_logits, targets, mask)?;
    if count == 0 {
        return Err(Error::input("distill_loss: the mask selects no position"));
    }
    let ce = (sum / count as f64)?;

    let teacher = as_f32(&teacher_logits.narrow(D::Minus1, 0, v)?)?.detach();
    let log_pt = log_softmax_last(&(teacher / temperature)?)?;
    let log_ps = log_softmax_last(&(as_f32(student_logits)? / temperature)?)?;
    // KL per position: Σ_v p_t (log p_t − log p_s)  → [B, T]
    let kl_pos = (log_pt.exp()? * (log_pt - log_ps)?)?.sum(D::Minus1)?;
    let kl = ((kl_pos * indicator(mask)?)?.sum_all()? / count as f64)?;

    let loss = ((&ce * alpha)? + (&kl * ((1.0 - alpha) * temperature * temperature))?)?;
    Ok(DistillLoss { loss, ce, kl })
}
